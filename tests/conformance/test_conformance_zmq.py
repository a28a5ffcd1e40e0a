from flamepy_conformance import TransportTests


class TestZmqConformance(TransportTests):
    transport_name = "zmq"
