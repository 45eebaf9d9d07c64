"""The server logs one line per request: model, image, processed slices, seconds, status.

monailabel 0.8.5 runs uvicorn without an access log: before this, a finished (or failed) request left no
line in the server log. Real server (session fixture), real requests; the lines are read from its log.
"""

from __future__ import annotations

import json
import re
import time

import requests

LINE = re.compile(r"request (?P<method>\S+) (?P<path>\S+) (?P<fields>.*?)seconds=(?P<seconds>[0-9.]+) status=(?P<status>\d+)")


def _lines(server, path: str, since: int) -> list[dict]:
    t0 = time.time()
    while time.time() - t0 < 10:
        with open(server.log_path) as f:
            text = f.read()[since:]
        found = [m.groupdict() for m in LINE.finditer(text) if m["path"] == path]
        if found:
            return found
        time.sleep(0.2)
    return []


def _fields(line: dict) -> dict:
    return dict(kv.split("=", 1) for kv in line["fields"].split())


def test_an_infer_request_logs_model_image_slices_seconds_status(server):
    since = len(open(server.log_path).read())
    params = {"label": "cord", "foreground": [[30, 27, 26]], "start_slice": 25, "end_slice": 27, "client_id": "log-test"}
    r = requests.post(f"{server.url}/infer/sam2_point", params={"image": "spinalcord_t2", "output": "json"},
                      files={"params": (None, json.dumps(params))}, timeout=300)
    assert r.status_code == 200, r.text
    lines = _lines(server, "/infer/sam2_point", since)
    assert len(lines) == 1, lines
    line = lines[0]
    fields = _fields(line)
    assert line["method"] == "POST" and line["status"] == "200"
    assert fields["model"] == "sam2_point" and fields["image"] == "spinalcord_t2" and fields["client"] == "log-test"
    lo, hi = r.json()["processed_range"]
    assert fields["slices"] == f"{lo}-{hi}" and 25 <= lo <= hi <= 27
    assert 0 < float(line["seconds"]) < 300


def test_a_refused_request_logs_its_4xx(server):
    since = len(open(server.log_path).read())
    r = requests.post(f"{server.url}/infer/sam2_point", params={"image": "spinalcord_t2"},
                      files={"params": (None, json.dumps({"background": [[1, 1, 26]]}))}, timeout=60)
    assert r.status_code == 400, r.text
    r2 = requests.get(f"{server.url}/datastore/image", params={"image": "no_such_image"}, timeout=60)
    assert r2.status_code == 404
    (line,) = _lines(server, "/infer/sam2_point", since)
    assert line["status"] == "400" and _fields(line)["model"] == "sam2_point" and "slices" not in _fields(line)
    (line2,) = _lines(server, "/datastore/image", since)
    assert line2["status"] == "404" and _fields(line2)["image"] == "no_such_image"
