"""The network between a client and its target: proxy, CA bundle, client certificate.

:class:`NetworkSettings` is decided once, when a client is made, from the keywords ``proxies=``,
``verify=`` and ``cert=`` and the environment, and every path that sends a request reads it (see
``Transport._new_session``). Precedence: a keyword wins over the environment.

- Proxy: with ``proxies=`` (a dict as ``requests`` takes it: ``{"https": "http://proxy:3128"}``, keys
  ``http``, ``https``, ``all`` or ``scheme://host``, and ``no_proxy``), exactly that dict decides and
  no proxy variable of the environment is read (``NO_PROXY`` neither: put ``"no_proxy"`` in the
  dict); ``proxies={}`` means none. Without it, ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` (lower
  case first) and ``NO_PROXY`` decide, as ``requests`` reads them. A client has one target, so this
  comes down to one proxy URL, or none, kept in :attr:`NetworkSettings.proxy`.
- CA bundle: ``verify="/path"`` (a file or a folder of hashed certificates); else
  ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``; else certifi's bundle. ``verify=False`` is refused:
  verification cannot be turned off; so is a bundle any user can write to (they could add a CA).
- Client certificate (mutual TLS): ``cert="/path/both.pem"`` or ``cert=("/path/cert.pem",
  "/path/key.pem")``; no environment variable.

Every value is checked here, at construction: a file that is missing or does not load, a proxy URL
that is not one (or of a scheme we do not send through), ``verify=False``. The ``ValueError`` or
``TypeError`` names the keyword (or the environment variable) and never a proxy's credentials.
"""

from __future__ import annotations

import os
import ssl
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

__all__ = ["NetworkSettings", "PathLike", "ProxiesSetting", "VerifySetting", "CertSetting"]

PathLike = Union[str, "os.PathLike[str]"]
#: ``proxies=``: scheme (or ``scheme://host``, ``all``, ``no_proxy``) -> proxy URL, as ``requests`` takes it.
ProxiesSetting = Optional[Mapping[str, str]]
#: ``verify=``: ``True`` (the environment's or certifi's bundle) or the path of a CA bundle.
VerifySetting = Union[bool, PathLike, None]
#: ``cert=``: one PEM file holding the certificate and its key, or ``(certificate, key)``.
CertSetting = Union[None, PathLike, Tuple[PathLike, PathLike]]

#: The schemes of proxies we send through (an HTTP proxy spoken to in the clear or over TLS).
PROXY_SCHEMES = ("http", "https")
#: The environment variables naming a CA bundle, in the order ``requests`` reads them.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def shown_proxy(url: str) -> str:
    """A proxy URL as it may be shown: its user information (``user:password@``) as ``***@``."""
    scheme, separator, rest = url.rpartition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{separator}{rest}"


@dataclass(frozen=True)
class NetworkSettings:
    """How one transport reaches its target (decided once; see the module's docstring).

    ``proxy``: the proxy URL requests to the target go through (it may hold credentials: see
    ``shown_proxy``), or None. ``ca_bundle``: the CA bundle file or folder that verifies servers,
    or None for the default (certifi's). ``client_cert``: ``(certificate, key)`` for mutual TLS
    (``key`` None when the certificate's file holds it too), or None.
    """

    target: str
    proxy: Optional[str] = field(default=None, repr=False)
    ca_bundle: Optional[str] = None
    client_cert: Optional[Tuple[str, Optional[str]]] = None

    def __repr__(self) -> str:
        proxy = None if self.proxy is None else shown_proxy(self.proxy)
        return (
            f"NetworkSettings(target={self.target!r}, proxy={proxy!r}, ca_bundle={self.ca_bundle!r}, "
            f"client_cert={self.client_cert!r})"
        )

    @classmethod
    def resolve(
        cls, target: str, *, proxies: ProxiesSetting = None, verify: VerifySetting = True, cert: CertSetting = None
    ) -> "NetworkSettings":
        """Check the keywords and read the environment for ``target`` (a normalized base URL)."""
        return cls(
            target=target,
            proxy=_proxy(target, proxies),
            ca_bundle=_ca_bundle(target, verify),
            client_cert=_client_cert(cert),
        )

    @property
    def requests_cert(self) -> Union[None, str, Tuple[str, str]]:
        """``client_cert`` as ``requests`` takes it."""
        if self.client_cert is None:
            return None
        certificate, key = self.client_cert
        return certificate if key is None else (certificate, key)

    def apply(self, session: requests.Session) -> None:
        """Set ``session`` up to reach the target this way (its ``trust_env`` is turned off: the
        environment was read once, here, and ``requests`` would read it again on every request)."""
        session.trust_env = False
        session.proxies.clear()
        if self.proxy is not None:
            session.proxies[urlsplit(self.target).scheme] = self.proxy
        session.verify = self.ca_bundle if self.ca_bundle is not None else True
        session.cert = self.requests_cert


def _proxy(target: str, proxies: ProxiesSetting) -> Optional[str]:
    """The proxy URL for ``target``, from ``proxies`` or (when None) the environment; checked."""
    if proxies is None:
        found = requests.utils.get_environ_proxies(target)  # {} when NO_PROXY covers the target
        url = requests.utils.select_proxy(target, found)
        if not url:
            return None
        return _checked_proxy(url, f"the environment's proxy for {target} (${_proxy_variable(target)})")
    if not isinstance(proxies, Mapping):
        raise TypeError(
            f"proxies must be a dict of scheme to proxy URL, such as {{'https': 'http://proxy:3128'}}, "
            f"not {type(proxies).__name__}"
        )
    chosen: Dict[str, Optional[str]] = {}
    for key, value in proxies.items():
        if not isinstance(key, str):
            raise TypeError(f"proxies: the keys must be strings (http, https, all, scheme://host), not {key!r}")
        if key == "no_proxy":
            if value is not None and not isinstance(value, str):
                raise TypeError(f"proxies['no_proxy'] must be a string of hosts separated by commas, not {type(value).__name__}")
            continue
        if value is None:  # requests' way of saying "no proxy for this one": it wins over "all"
            chosen[key] = None
            continue
        if not isinstance(value, str):
            raise TypeError(f"proxies[{key!r}] must be a proxy URL string, not {type(value).__name__}")
        chosen[key] = _checked_proxy(value, f"proxies[{key!r}]")
    no_proxy = proxies.get("no_proxy")
    if no_proxy and requests.utils.should_bypass_proxies(target, no_proxy=no_proxy):
        return None
    return requests.utils.select_proxy(target, chosen) or None  # type: ignore[arg-type]  # None: requests' "none"


def _proxy_variable(target: str) -> str:
    """The name of the environment variable the proxy for ``target`` came from."""
    scheme = urlsplit(target).scheme
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
        if os.environ.get(name):
            return name
    return f"{scheme.upper()}_PROXY"


def _checked_proxy(url: str, where: str) -> str:
    """``url`` (``host:port`` taken as ``http://host:port``, as ``requests`` does) if it is a proxy
    URL we can use; else ``ValueError`` naming ``where`` and the URL without its credentials."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    shown = shown_proxy(text)
    try:
        parts = parse_url(text)
        port = parts.port
    except (LocationParseError, ValueError):
        raise ValueError(f"{where} {shown!r} is not a URL such as 'http://proxy.example:3128'") from None
    scheme = (parts.scheme or "").lower()
    if scheme not in PROXY_SCHEMES:
        raise ValueError(
            f"{where} {shown!r}: a proxy URL must start with http:// or https:// (an HTTP proxy), not {scheme}://"
        )
    if not parts.host or any(character.isspace() for character in text):
        raise ValueError(f"{where} {shown!r} is not a URL such as 'http://proxy.example:3128'")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{where} {shown!r} has no valid port")
    return text


def _path(value: Any, where: str) -> str:
    """A path given as ``str`` or ``os.PathLike`` (``TypeError`` naming ``where`` otherwise)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise TypeError(f"{where} must be a file path (str or os.PathLike), not {type(value).__name__} {value!r}")
    return value


def _ca_bundle(target: str, verify: VerifySetting) -> Optional[str]:
    """The CA bundle path from ``verify`` or (when True) the environment, checked to load; None: certifi's."""
    if verify is False:
        raise ValueError(
            "verify=False is refused: TLS verification cannot be turned off. Pass verify= the path of the CA "
            "bundle (a file, or a folder of hashed certificates) that signed the server's certificate"
        )
    if verify is None or verify is True:
        for name in CA_BUNDLE_VARIABLES:
            bundle = os.environ.get(name)
            if bundle:
                # Checked only where it is used: an http:// target never reads it (as before).
                if urlsplit(target).scheme == "https":
                    _check_ca_bundle(bundle, f"${name}")
                return bundle
        return None
    if isinstance(verify, (int, float)):
        raise TypeError(f"verify must be True or the path of a CA bundle, not {verify!r}")
    bundle = _path(verify, "verify")
    _check_ca_bundle(bundle, "verify")
    return bundle


def _check_ca_bundle(bundle: str, where: str) -> None:
    """``ValueError`` naming ``where`` unless ``bundle`` is a folder or a file of PEM certificates
    that only its owner and group can change."""
    try:
        mode = os.stat(bundle).st_mode
    except OSError:
        mode = 0
    if mode & stat.S_IWOTH:  # anyone could add a CA to trust: as good as no verification
        raise ValueError(
            f"{where}: the CA bundle {bundle!r} can be written by any user (mode {stat.S_IMODE(mode):o}): anyone "
            "could add a certificate authority it trusts; use a file or folder others cannot write to"
        )
    if os.path.isdir(bundle):
        return  # a folder of hashed certificates: OpenSSL reads a file of it only when it needs it
    if not os.path.isfile(bundle):
        raise ValueError(f"{where}: the CA bundle {bundle!r} does not exist (give a PEM file or a folder)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=bundle)
    except (ssl.SSLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or type(error).__name__
        raise ValueError(f"{where}: the CA bundle {bundle!r} holds no certificate that can be read ({reason})") from None


def refuse_password(*_: Any) -> bytes:
    """The password callback of ``load_cert_chain`` that refuses an encrypted key (OpenSSL's own asks
    for it on the terminal, and waits there)."""
    raise ValueError("an encrypted private key is not supported")


def _client_cert(cert: CertSetting) -> Optional[Tuple[str, Optional[str]]]:
    """``cert`` as ``(certificate, key or None)``, checked to load as a certificate and its key."""
    if cert is None:
        return None
    if isinstance(cert, (tuple, list)):
        if len(cert) != 2:
            raise ValueError(f"cert must be a path or a (certificate, key) pair of paths, not {len(cert)} values")
        certificate: str = _path(cert[0], "cert[0] (the certificate)")
        key: Optional[str] = _path(cert[1], "cert[1] (the private key)")
        where = "cert"
    else:
        certificate, key, where = _path(cert, "cert"), None, "cert"
    for path, what in ((certificate, "certificate"), (key, "private key")):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{where}: the {what} file {path!r} does not exist")
    try:
        # Loaded once here, so that a bad file fails now and not at every request. An encrypted key
        # is refused (OpenSSL would otherwise ask for its password on the terminal).
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(certificate, key, password=refuse_password)
    except (ssl.SSLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error) or type(error).__name__
        files = repr(certificate) if key is None else f"{certificate!r} and {key!r}"
        raise ValueError(
            f"{where}: {files} cannot be loaded as a PEM certificate and its unencrypted private key ({reason})"
        ) from None
    return certificate, key
