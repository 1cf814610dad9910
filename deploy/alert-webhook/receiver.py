"""An example Alertmanager webhook receiver: logs one line per alert it is sent.

Alertmanager POSTs a JSON document (version 4) with the grouped alerts to each webhook_config
URL; see https://prometheus.io/docs/alerting/latest/configuration/#webhook_config. Stand-in for
a paging or chat integration in the docker-compose stack; replace it in production.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

MAX_BODY = 1 << 20


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_response(413)
            self.end_headers()
            return
        try:
            document = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_response(400)
            self.end_headers()
            return
        for alert in document.get("alerts", []):
            labels = alert.get("labels", {})
            print(
                f"{self.path.strip('/') or 'alert'}: {alert.get('status')} "
                f"{labels.get('alertname')} severity={labels.get('severity')} "
                f"{alert.get('annotations', {}).get('summary', '')}",
                flush=True,
            )
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9095
    HTTPServer(("0.0.0.0", port), Receiver).serve_forever()
