"""The fleet on MQTT: status publishing, signed settings, ``connectaggregator`` and ``fleet``.

Nothing here is imported by the data path unless ``--mqtt-broker-addr`` is given, and the
MQTT library (paho-mqtt, the ``mqtt`` extra) is imported only by :mod:`ratbond.mqtt.broker`,
so a router without it runs the tunnel as before.  Topic tree: :mod:`ratbond.mqtt.topics`.
"""
