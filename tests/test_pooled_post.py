"""``bulk`` requests on the urllib3 pool of the session's adapter: which pool a request takes."""

from __future__ import annotations

from typing import Any, List

import requests

from seven_segments.pooled_post import PooledPost

URL = "https://api.example.test/bulk"


def test_the_pool_key_is_worked_out_once_for_the_settings_in_use(monkeypatch: Any, tmp_path: Any) -> None:
    """requests looks at the CA bundle's path on the disk when it works out a pool's key: once for
    the settings in use, not at every request; a change of the session's TLS settings is followed."""
    session = requests.Session()
    adapter = session.get_adapter(URL)
    worked_out: List[Any] = []
    real = adapter.build_connection_pool_key_attributes

    def counted(*arguments: Any) -> Any:
        worked_out.append(arguments)
        return real(*arguments)

    monkeypatch.setattr(adapter, "build_connection_pool_key_attributes", counted)
    post = PooledPost(session, URL)
    first = post._pool()
    assert post._pool() is first and post._pool() is first
    assert len(worked_out) == 1

    bundle = tmp_path / "ca.pem"
    session.verify = str(bundle)
    other = post._pool()
    assert len(worked_out) == 2 and other is not first
    assert other.ca_certs == str(bundle)
    assert post._pool() is other and len(worked_out) == 2

    session.cert = (str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    with_client_certificate = post._pool()
    assert len(worked_out) == 3 and with_client_certificate.cert_file == str(tmp_path / "client.pem")
