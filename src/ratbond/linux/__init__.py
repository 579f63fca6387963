"""Linux platform layer: TUN device, path sockets, routes and WAN discovery over netlink.

Nothing outside this package imports Linux specifics.  :mod:`~ratbond.linux.wan` is pure
(sans-I/O) and safe to import anywhere; the other modules talk to the kernel.
"""
