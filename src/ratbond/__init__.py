"""ratbond: bond several WAN links into one Linux TUN interface over KCP."""

__version__ = "0.1.0"
