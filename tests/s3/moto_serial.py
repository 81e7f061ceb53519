"""moto's S3 server, answering one request at a time.

moto checks a conditional PUT and then stores the object without a lock, so
under concurrent requests two If-None-Match creates can both win (measured:
docs/reference/s3-test-servers.md). Real S3 is atomic; serialising the
server makes moto so too, which the lease and conformance tests rely on.
Usage: python3 moto_serial.py PORT
"""
import os
import sys

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

port = int(sys.argv[1])
os.environ.setdefault("MOTO_PORT", str(port))
run_simple("127.0.0.1", port, DomainDispatcherApplication(create_backend_app), threaded=False)
