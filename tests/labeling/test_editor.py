"""What a labeler sees: the real Label Studio editor in a headless Chromium shows the task's own text,
or its own image (the PNG bytes, at their real size, drawn without smoothing).

Chromium is driven over the DevTools protocol (`websockets`, which web3 already brings) with the
session a browser login gives; the page is polled until it shows the payload or a deadline passes.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import time
import uuid

import httpx
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from labeling import ProjectSpec, sync_tasks
from labeling.configs import image_data_url
from provenance.anvil import free_port

CHROMIUM = shutil.which("chromium")
DEADLINE_S = 90


def _session_cookies(labelstudio) -> dict[str, str]:
    """Log in through Label Studio's own login form, as a labeler's browser does."""
    with httpx.Client(base_url=labelstudio.base_url) as http:
        http.get("/user/login/")
        done = http.post(
            "/user/login/",
            data={
                "email": labelstudio.username,
                "password": labelstudio.password,
                "csrfmiddlewaretoken": http.cookies.get("csrftoken"),
            },
            headers={"Referer": f"{labelstudio.base_url}/user/login/"},
        )
        assert done.status_code == 302, done.text[:300]
        return dict(http.cookies)


async def _until(labelstudio, path: str, expression: str, profile) -> object:
    """Open `path` in Chromium (logged in) and evaluate `expression` until it is truthy; its last value."""
    import websockets

    port = free_port()
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
         f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "Chromium's DevTools endpoint never answered"
                await asyncio.sleep(0.3)
        page = next(t for t in targets if t["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
            ids = iter(range(1, 10**6))

            async def call(method: str, **params):
                mid = next(ids)
                await ws.send(json.dumps({"id": mid, "method": method, "params": params}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == mid:
                        return msg.get("result", {})

            for name, value in _session_cookies(labelstudio).items():
                await call("Network.setCookie", name=name, value=value, url=labelstudio.base_url)
            await call("Page.navigate", url=labelstudio.base_url + path)
            value = None
            while time.monotonic() < deadline:
                result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
                value = result.get("result", {}).get("value")
                if value:
                    return value
                await asyncio.sleep(0.5)
            return value
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _open_task(labelstudio, client, spec: ProjectSpec, examples: pa.Table, expression: str, profile):
    project = client.ensure_project(spec)
    assert sync_tasks(client, project, examples).created == examples.num_rows
    keys, _ = client.task_keys(project.id)
    path = f"/projects/{project.id}/data?tab=0&task={keys[examples['example_id'][0].as_py()]}"
    return asyncio.run(_until(labelstudio, path, expression, profile))


needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium")


@needs_browser
def test_the_editor_shows_the_task_image_itself(labelstudio, client, tmp_path):
    if not labelstudio.password:
        pytest.skip("a Label Studio given by environment: no login for a browser")
    digit = np.zeros((8, 8), dtype=np.uint8)
    digit[1:7, 3:5] = 255  # a "1"
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, format="PNG")
    png = buf.getvalue()
    examples = pa.table(
        {"example_id": ["d1"], "provider": ["p"], "image": pa.array([png], pa.binary()), "source": ["t"]}
    )
    spec = ProjectSpec(f"editor {uuid.uuid4().hex[:8]}", "image", ("0", "1"), "image")
    assert 'smoothing="false"' in spec.label_config
    src = json.dumps(image_data_url(png))
    shown = _open_task(
        labelstudio, client, spec, examples,
        f"[...document.images].filter(i => i.src === {src} && i.complete)"
        ".map(i => [i.naturalWidth, i.naturalHeight])[0]",
        tmp_path / "profile",
    )  # fmt: skip
    assert shown == [8, 8]  # the task's own PNG, decoded by the browser at its real size


@needs_browser
def test_the_editor_shows_the_task_text_itself(labelstudio, client, tmp_path):
    if not labelstudio.password:
        pytest.skip("a Label Studio given by environment: no login for a browser")
    text = f"The chef simmered the tomato sauce. Ça sent bon, {uuid.uuid4().hex[:6]}!"
    examples = pa.table({"example_id": ["t1"], "provider": ["p"], "text": [text], "source": ["t"]})
    spec = ProjectSpec(f"editor {uuid.uuid4().hex[:8]}", "text", ("cooking", "sport"), "text")
    shown = _open_task(
        labelstudio, client, spec, examples, f"document.body.innerText.includes({json.dumps(text)})",
        tmp_path / "profile",
    )  # fmt: skip
    assert shown is True


@needs_browser
def test_the_editor_shows_the_rows_columns_and_values(labelstudio, client, tmp_path):
    """A table project: the labeler reads each column's name beside its value, the row's own."""
    if not labelstudio.password:
        pytest.skip("a Label Studio given by environment: no login for a browser")
    city = f"oslo-{uuid.uuid4().hex[:6]}"
    examples = pa.table({"example_id": ["r1"], "provider": ["p"], "source": ["t"], "tenure_months": [27.0],
                         "city": [city]})
    spec = ProjectSpec(f"editor {uuid.uuid4().hex[:8]}", "table", ("churn", "stay"), "row")
    cells = "[...document.querySelectorAll('td')].map(c => c.innerText.trim())"
    shown = _open_task(
        labelstudio, client, spec, examples,
        f"(c => c.includes({json.dumps(city)}) && c)({cells})", tmp_path / "profile",
    )  # fmt: skip
    assert shown and {"city", city, "tenure_months", "27"} <= set(shown)
