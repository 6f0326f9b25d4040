# ssl for the MicroPython WebAssembly VM (which has none), installed there as /lib/ssl.py.
#
# It behaves like micropython-lib's ssl module over the tls module, the one an ESP32 build has:
# SSLContext(protocol) starts with verify_mode = CERT_NONE whatever the protocol, and
# load_verify_locations() takes cafile or cadata. The VM board (vmboard.py) opens the connection
# through the runner's TLS bridge with exactly these settings: the certificate and host name are
# checked only if verify_mode is CERT_REQUIRED, as mbedTLS does on the device.
CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1


class SSLContext:
    def __init__(self, *args):
        self.protocol = args[0] if args else PROTOCOL_TLS_CLIENT
        self.verify_mode = CERT_NONE
        self._ca = None

    def load_verify_locations(self, cafile=None, cadata=None):
        if cafile:
            with open(cafile, "rb") as f:
                cadata = f.read()
        self._ca = cadata
