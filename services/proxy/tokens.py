"""Read-your-writes tokens: a write's replication position, signed, handed to the client.

A token is ``v1.<payload>.<mac>``: the payload names the flavour and the primary's GTID
position right after the write; the MAC (HMAC-SHA256, cut to 128 bits) proves that a Proxy of
this cluster issued it, so a token from another cluster, or one edited by hand, is refused
with a 400 instead of making a replica wait for a position that will never come. The client
treats the token as opaque; every Proxy sharing the secret reads every other's tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from services.errors import ApiError
from services.proxy.replication import Flavour, PositionError

VERSION = "v1"
MAC_BYTES = 16
# Without PROXY_TOKEN_SECRET the key is derived from the database password, which every
# Proxy of one cluster already shares (and which is never sent anywhere).
DERIVATION_LABEL = b"sqlgate read-your-writes token v1"


def derive_secret(db_password: str) -> bytes:
    return hmac.new(db_password.encode(), DERIVATION_LABEL, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenCodec:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:MAC_BYTES]

    def issue(self, flavour: Flavour, position: str) -> str:
        payload = f"{flavour.name}|{position}".encode()
        return f"{VERSION}.{_b64(payload)}.{_b64(self._mac(payload))}"

    def position(self, tokens: list[str], flavour: Flavour) -> str:
        """The merged position of one or more tokens; ApiError(400) for a bad one."""
        positions = []
        for index, token in enumerate(tokens):
            where = "'after'" if len(tokens) == 1 else f"'after'[{index}]"
            positions.append(self._read(token, flavour, where))
        return flavour.merge(positions)

    def _read(self, token: str, flavour: Flavour, where: str) -> str:
        version, _, rest = token.partition(".")
        payload_text, _, mac_text = rest.partition(".")
        try:
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            payload, mac = b"", b""
        if version != VERSION or not payload or not hmac.compare_digest(mac,
                                                                        self._mac(payload)):
            raise ApiError(400, f"{where} is not a token issued by this cluster (send the "
                           "'token' of a write's answer, unchanged)")
        name, _, position = payload.decode(errors="replace").partition("|")
        if name != flavour.name:
            raise ApiError(400, f"{where} was issued for a {name} cluster, this one runs "
                           f"{flavour.name}")
        try:
            flavour.parse(position)
        except PositionError as error:
            raise ApiError(400, f"{where}: {error}") from None
        return position
