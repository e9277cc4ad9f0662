"""Which address a ``mooncake_master`` that longdraft starts listens on (``store.mooncake.master_bind``).

The master has no authentication: anyone who reaches its port can read and delete shards. So the
address is the user's choice, checked here: an interface or IPv4 address of this machine, never the
wildcard (which would also announce an address the clients cannot connect to).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from longdraft.errors import UserError

KEY = "store.mooncake.master_bind"
SIOCGIFADDR = 0x8915  # linux/sockios.h: an interface's IPv4 address


class BindAddressError(UserError):
    pass


def interface_ipv4(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None  # the interface has no IPv4 address
    return socket.inet_ntoa(packed[20:24])


def _bindable(ip: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


def master_bind_address(setting: str, auto: str) -> str:
    """The IPv4 address for ``setting`` (``auto``: ``auto``, the driver's node IP), or a one-line refusal."""
    if setting == "auto":
        return auto
    interfaces = [name for _, name in socket.if_nameindex()]
    expected = f"auto, an IPv4 address of this machine or one of its interfaces ({', '.join(interfaces)})"
    if setting in interfaces:
        ip = interface_ipv4(setting)
        if ip is None:
            raise BindAddressError(f"{KEY} = {setting}: that interface has no IPv4 address; expected {expected}")
        return ip
    try:
        ip = ipaddress.ip_address(setting)
    except ValueError:
        raise BindAddressError(f"{KEY} = {setting!r}: not an interface or IP address; expected {expected}") from None
    if ip.version != 4 or ip.is_unspecified or ip.is_multicast:
        raise BindAddressError(
            f"{KEY} = {setting}: the master needs one IPv4 address that clients connect to "
            f"(not a wildcard, IPv6 or multicast one); expected {expected}"
        )
    if not _bindable(setting):
        raise BindAddressError(f"{KEY} = {setting}: not an address of this machine; expected {expected}")
    return setting
