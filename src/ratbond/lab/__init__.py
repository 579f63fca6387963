"""The lab: network namespaces and emulated WAN links on one Linux machine."""
