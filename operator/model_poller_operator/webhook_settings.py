"""The admission webhook's settings: ``MODEL_POLLER_OPERATOR_WEBHOOK_*`` variables (the
chart sets them); without a port the webhook is off."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from model_poller_operator.config import SettingsError, host, object_name, read_env, setting

ENV_PREFIX: Final = "MODEL_POLLER_OPERATOR_WEBHOOK_"


@dataclass(frozen=True)
class WebhookSettings:
    """Where the webhook listens and where its certificate comes from."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    port: int = setting(
        0, "HTTPS port of the admission webhook (the chart sets it); 0: no webhook", minimum=0, maximum=65535
    )
    address: str = setting("0.0.0.0", "address the webhook listens on", check=host)
    # Self-signed mode: the Secret NAMESPACE/NAME holding the CA and serving certificate,
    # the names the certificate is for, and the MutatingWebhookConfiguration whose caBundle
    # the operator keeps equal to that CA.
    secret: str = setting(
        "",
        "NAMESPACE/NAME of the Secret holding the webhook's self-signed CA and certificate (shared by every replica)",
    )
    hosts: tuple[str, ...] = setting(
        (), "comma-separated names (or IPs) the certificate is for: the webhook Service's DNS names", check=host
    )
    configuration: str = setting(
        "", "the MutatingWebhookConfiguration whose caBundle the operator keeps equal to its CA", check=object_name
    )
    # Or: a folder with tls.crt and tls.key written by someone else (cert-manager).
    cert_dir: str = setting(
        "",
        f"instead of {ENV_PREFIX}SECRET: a folder with tls.crt and tls.key kept by someone else "
        "(cert-manager); reloaded when they change",
    )
    check_interval: float = setting(
        60.0,
        "seconds between two checks of the certificate (renewal, another replica's write) and of the caBundle",
        minimum=0.1,
    )
    lookup_timeout: float = setting(
        2.0,
        "seconds each API lookup of an admission may take (the API server waits timeoutSeconds in all)",
        minimum=0.1,
    )

    @property
    def enabled(self) -> bool:
        return self.port > 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookSettings:
        """``MODEL_POLLER_OPERATOR_WEBHOOK_PORT=9443`` etc.; raises SettingsError naming the variable."""
        settings = read_env(cls, environ)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that cannot work together, naming the variables."""
        if not self.enabled:
            return
        if self.secret and self.cert_dir:
            raise SettingsError(
                f"{ENV_PREFIX}CERT_DIR and {ENV_PREFIX}SECRET are both set: set only one, "
                "CERT_DIR (cert-manager) or SECRET (self-signed)"
            )
        if not self.secret and not self.cert_dir:
            raise SettingsError(
                f"{ENV_PREFIX}PORT is set: set {ENV_PREFIX}SECRET (self-signed) or {ENV_PREFIX}CERT_DIR (cert-manager) too"
            )
        if self.secret and (self.secret.count("/") != 1 or not all(self.secret.split("/"))):
            raise SettingsError(f"{ENV_PREFIX}SECRET={self.secret!r} must be NAMESPACE/NAME")
        if self.secret and not self.hosts:
            raise SettingsError(
                f"{ENV_PREFIX}HOSTS must name the webhook's Service (e.g. svc.ns.svc) for its certificate"
            )
