from flamepy_conformance import TransportTests


class TestUdsConformance(TransportTests):
    transport_name = "uds"
