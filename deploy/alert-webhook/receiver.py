"""An example Alertmanager webhook receiver: logs one line per alert it is sent.

Alertmanager POSTs a JSON document (version 4) with the grouped alerts to each webhook_config
URL; see https://prometheus.io/docs/alerting/latest/configuration/#webhook_config. Stand-in for
a paging or chat integration in the docker-compose stack; replace it in production.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class Receiver(BaseHTTPRequestHandler):
    # A client that stops sending does not hold a thread for ever.
    timeout = 10

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.answer(411 if length < 0 else 413)
            return
        try:
            document = json.loads(self.rfile.read(length) or b"{}")
            alerts = document.get("alerts", []) if isinstance(document, dict) else []
        except ValueError:
            self.answer(400)
            return
        for alert in alerts if isinstance(alerts, list) else []:
            alert = alert if isinstance(alert, dict) else {}
            labels = alert.get("labels") if isinstance(alert.get("labels"), dict) else {}
            notes = alert.get("annotations") if isinstance(alert.get("annotations"), dict) else {}
            print(
                f"{self.path.strip('/') or 'alert'}: {alert.get('status')} "
                f"{labels.get('alertname')} severity={labels.get('severity')} "
                f"{notes.get('summary', '')}",
                flush=True,
            )
        self.answer(200)

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9095
    ThreadingHTTPServer(("0.0.0.0", port), Receiver).serve_forever()
