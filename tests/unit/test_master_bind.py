"""``store.mooncake.master_bind``: the unauthenticated master listens only where the user says, and a
value that is no single address of this machine is refused in one line naming the key."""

import pytest

from longdraft.store.bind_address import BindAddressError, master_bind_address


def test_auto_interface_and_address():
    assert master_bind_address("auto", auto="10.1.2.3") == "10.1.2.3"
    assert master_bind_address("lo", auto="10.1.2.3") == "127.0.0.1"
    assert master_bind_address("127.0.0.2", auto="10.1.2.3") == "127.0.0.2"  # all of 127/8 is lo's


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0.0.0.0", "not a wildcard"),
        ("::1", "IPv6"),
        ("198.51.100.77", "not an address of this machine"),
        ("nosuchif0", "not an interface or IP address"),
    ],
)
def test_refused(value, why):
    with pytest.raises(BindAddressError) as info:
        master_bind_address(value, auto="127.0.0.1")
    line = str(info.value)
    assert line.startswith("store.mooncake.master_bind = ") and why in line and "\n" not in line
    assert "expected auto, an IPv4 address of this machine or one of its interfaces (lo" in line
