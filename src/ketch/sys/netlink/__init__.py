"""ketch's own rtnetlink adapter: links, addresses and routes over a NETLINK_ROUTE socket.

Stdlib only (socket + struct), small enough to import in the daemon without cost.
Three layers, each importable on its own:

    wire       framing, attributes, family headers, NLMSG_ERROR / ext-ack parsing
    messages   request builders and reply decoders (Link, Addr, Route)
    conn       Netlink: the socket, request/ACK and dump discipline, the operations

Typical use::

    with Netlink.open("/run/netns/c1") as nl:
        nl.set_link("eth0", up=True)
        nl.add_addr("eth0", "10.1.0.2/24")
        nl.add_route("default", gateway="10.1.0.1")
"""

from ketch.sys.netlink.conn import Netlink
from ketch.sys.netlink.messages import Addr, Link, Route
from ketch.sys.netlink.wire import DecodeError

__all__ = ["Addr", "DecodeError", "Link", "Netlink", "Route"]
