"""``cos3d view`` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven
by selenium) against the viewer of the session's trained tabletop run, on a free loopback port.

Checked: the page loads and the splats render (the 3D view's screenshot has content: not blank, not one
flat colour); typing a prompt and pressing Query lists the answer's objects and tints the view; a click
on a known object's pixel selects that object, shift-click adds another, alt-click removes it; Export
writes a .ply of the selection and the objects' .json, whose contents are checked; a frustum click shows
the frame. Skipped, with the reason, where chromium, chromedriver or selenium is missing
(``bash scripts/install.sh test`` installs them on Debian as root, as CI runs).

``COS3D_SCREENSHOTS=DIR`` also saves the screenshots there (``docs/images`` holds the README's).
"""

from __future__ import annotations

import io
import json
import re
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                "bash scripts/install.sh test does it as root)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install 'cos3d[test]')")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

WINDOW = (900, 600)
PANEL_X = 0.62
"""The 3D view's part of the screenshot left of the GUI panel (fraction of the width)."""


T0 = time.time()


def step(what: str) -> None:
    """A progress line (shown with -s): where the time goes on a slow machine."""
    print(f"[{time.time() - T0:6.1f} s] {what}", flush=True)


def wait_for(cond, timeout: float = 90.0, what: str = "condition", poll: float = 0.3):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            step(f"{what}: {time.time() - t0:.1f} s")
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def viewer(trained_run, tmp_path_factory):
    import cos3d
    from cos3d.viewer import serve

    ts = cos3d.load(trained_run, device="cpu")
    export_dir = tmp_path_factory.mktemp("view-export")
    lines: list[str] = []
    # the 12k most opaque splats: enough for the picture, light on software WebGL (2 shared cores)
    app = serve(ts, host="127.0.0.1", port=0, block=False, export_dir=export_dir, log=lines.append,
                max_splats=12_000)
    assert any("http://localhost:" in ln for ln in lines) and not any("warning" in ln for ln in lines)
    yield app
    app.server.stop()
    app.close()


@pytest.fixture(scope="module")
def page(viewer):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}",
              "--enable-unsafe-swiftshader", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(a)
    # software WebGL renders every pixel on the CPU: half the device pixels unless pictures are wanted
    opts.add_argument(f"--force-device-scale-factor={1.0 if os.environ.get('COS3D_SCREENSHOTS') else 0.5}")
    opts.binary_location = CHROMIUM
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(120)
    try:
        d.get(f"http://127.0.0.1:{viewer.server.get_port()}")
        wait_for(lambda: "Connected" in body_text(d), what="the page to connect")
        wait_for(lambda: viewer.server.get_clients(), what="the client to register")
        wait_for(lambda: "Ready. Type a prompt" in body_text(d), timeout=180, what="the engine's warm-up")
        for b in d.find_elements(By.CSS_SELECTOR, ".mantine-Notification-root button"):
            b.click()  # "software WebGL" notice
        yield d
    finally:
        d.quit()


def body_text(d) -> str:
    try:
        return d.find_element(By.TAG_NAME, "body").text
    except Exception:  # noqa: BLE001 - mid re-render
        return ""


def view_pixels(d) -> np.ndarray:
    """The 3D view (left of the panel) of a screenshot, uint8 [H, W, 3]."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB"))
    return img[:, : int(PANEL_X * img.shape[1])]


def save(d, name: str) -> None:
    out = os.environ.get("COS3D_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(Path(out) / name))


def settle(d, frames: int = 3) -> None:
    """Let the page draw a few frames (software WebGL on 2 cores is slow)."""
    time.sleep(1.5)
    d.execute_script("return 0")


def field_input(d, label: str):
    return d.find_element(
        By.XPATH, f"//label[normalize-space()='{label}']/ancestor::div[contains(@class,'mantine-Flex-root')][1]//input"
    )


def press(d, text: str) -> None:
    """Click a panel button by its label (scrolled into view first: the panel scrolls)."""
    el = d.find_element(By.XPATH, f"//button[normalize-space()='{text}']")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", el)


def expand(d, folder: str) -> None:
    el = d.find_element(By.XPATH, f"//*[normalize-space(text())='{folder}']")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", el)
    time.sleep(0.5)


def screen_xy(client, point: np.ndarray) -> tuple[float, float]:
    """Where a world point is in a client's view, as fractions (0..1) of the view's width and height
    (viser cameras: OpenCV axes, vertical fov)."""
    import viser.transforms as vtf

    cam = client.camera
    R = vtf.SO3(np.asarray(cam.wxyz)).as_matrix()
    p = R.T @ (np.asarray(point, float) - np.asarray(cam.position))
    assert p[2] > 0, "the point is behind the camera"
    h, w = cam.image_height, cam.image_width
    f = 0.5 * h / np.tan(0.5 * cam.fov)
    return (w / 2 + f * p[0] / p[2]) / w, (h / 2 + f * p[1] / p[2]) / h


def click_at(d, xy: tuple[float, float], modifier=None) -> None:
    """Click the 3D view at fractions ``xy`` of its size, holding ``modifier``."""
    canvas = d.find_element(By.TAG_NAME, "canvas")
    size = canvas.size
    ox, oy = (xy[0] - 0.5) * size["width"], (xy[1] - 0.5) * size["height"]
    chain = ActionChains(d)
    if modifier is not None:
        chain = chain.key_down(modifier)
    chain = chain.move_to_element_with_offset(canvas, int(round(ox)), int(round(oy))).click()
    if modifier is not None:
        chain = chain.key_up(modifier)
    chain.perform()


def changed_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels whose colour moved by more than 40 levels in some channel."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(2) > 40).mean())


def visible_point(app, obj) -> np.ndarray:
    """A world point of ``obj`` to click: its most opaque Gaussians' median (on the object, not in air)."""
    g = app.trained.gaussians
    ids = obj.gaussians
    op = g.opacities.detach().numpy()[ids]
    core = ids[op >= np.quantile(op, 0.5)]
    return np.median(g.means.detach().numpy()[core], axis=0)


def test_browser_query_click_export(viewer, page):
    d, app = page, viewer
    client = next(iter(app.server.get_clients().values()))

    # --- the page loads and the splats render: content, not a blank or grey page
    settle(d)
    before = view_pixels(d)
    save(d, "viewer_start.png")
    gray = before.astype(float).mean(2)
    assert gray.std() > 12, f"the 3D view looks blank (grey std {gray.std():.1f})"
    colours = len(np.unique((before // 32).reshape(-1, 3), axis=0))
    assert colours >= 12, f"the 3D view holds only {colours} colour bins"
    # the first view frames the scene: the scene's centre is in the view, frustums are small
    x, y = screen_xy(client, app.framing.look_at)
    assert 0 < x < 1 and 0 < y < 1
    assert app.framing.frustum_scale < 0.2 * app.framing.extent

    # --- type a prompt: the object list and the view change
    inp = field_input(d, "Prompt")
    inp.click()
    inp.send_keys("red coffee mug")
    time.sleep(0.5)
    press(d, "Query")
    wait_for(lambda: app.last_answer is not None and app.last_answer.prompt == "red coffee mug", what="the answer")
    ans = app.last_answer
    assert ans.error is None and ans.objects, ans
    mug = ans.objects[0]
    wait_for(lambda: f"#{mug.id}" in body_text(d) and "Gaussians" in body_text(d), what="the object list")
    assert f"Focus red coffee mug #{mug.id}" in body_text(d)  # named, not just an id
    ActionChains(d).move_to_element(d.find_element(By.XPATH, "//*[normalize-space(text())='Connected']")).perform()
    settle(d)  # the pointer off the prompt field (no tooltip in the picture)
    after = view_pixels(d)
    changed = changed_share(after, before)
    step(f"the query changed {changed:.2%} of the view")
    assert changed > 5e-4, f"the query changed only {changed:.3%} of the view"
    save(d, "viewer_query.png")

    # --- a click on the mug's pixel selects the mug; the answer names the clicked pixel of the view
    target = visible_point(app, mug)
    xy = screen_xy(client, target)
    click_at(d, xy)
    wait_for(lambda: app.last_answer is not ans and app.last_answer.kind == "click", what="the click's answer")
    clicked = app.last_answer
    assert clicked.error is None and len(clicked.objects) == 1, clicked
    px = re.search(r"click at \((\d+), (\d+)\) px", clicked.prompt)
    assert px, clicked.prompt
    want = (xy[0] * client.camera.image_width, xy[1] * client.camera.image_height)
    assert abs(int(px.group(1)) - want[0]) <= 3 and abs(int(px.group(2)) - want[1]) <= 3, (px.group(0), want)
    overlap = np.intersect1d(clicked.objects[0].gaussians, mug.gaussians).size
    assert overlap >= 0.5 * min(len(mug.gaussians), len(clicked.objects[0].gaussians)), (overlap, len(mug.gaussians))

    # --- shift-click adds another object (the blue mug), alt-click removes the red one
    blue = app.query("blue mug")
    assert blue.objects
    app.show(clicked)  # back to the clicked selection
    click_at(d, screen_xy(client, visible_point(app, blue.objects[0])), Keys.SHIFT)
    wait_for(lambda: app.last_answer.kind == "selection" and len(app.last_answer.objects) == 2,
             what="shift-click to add the blue mug")
    click_at(d, screen_xy(client, target), Keys.ALT)
    wait_for(lambda: app.last_answer.kind == "selection" and len(app.last_answer.objects) == 1,
             what="alt-click to remove the red mug")
    left = app.last_answer.objects[0]
    assert np.intersect1d(left.gaussians, blue.objects[0].gaussians).size > 0
    assert np.intersect1d(left.gaussians, mug.gaussians).size == 0

    # --- export from the page: the selection as .ply, the objects as .json
    from cos3d.data.ply import read_ply

    app.query("red coffee mug")
    expand(d, "Export")
    press(d, "Selection (.ply)")
    ply = wait_for(lambda: sorted(app.export_dir.glob("selection_*.ply")), what="the exported .ply")[0]
    g = read_ply(ply)
    sel = np.sort(app.last_answer.selected)
    assert g.num == len(sel)
    np.testing.assert_allclose(g.means.numpy(), app.trained.gaussians.means.detach().numpy()[sel], atol=1e-6)
    press(d, "Objects (.json)")
    js = wait_for(lambda: sorted(app.export_dir.glob("selection_*.json")), what="the exported .json")[0]
    data = json.loads(js.read_text())
    assert [o["id"] for o in data["objects"]] == [o.id for o in app.last_answer.objects]
    assert data["objects"][0]["num_gaussians"] == len(app.last_answer.objects[0].gaussians)
    wait_for(lambda: "Wrote" in body_text(d), what="the export line")


def gt_points(scene, instance: int) -> np.ndarray:
    """Ground truth (the test may read it; the viewer may not): world points of ``instance``, back-projected
    from the training frames' depth and instance maps."""
    pts = []
    for f in scene.split("train"):
        depth, inst = f.load_depth(), f.load_instance()
        keep = (inst == instance) & (depth > 0)
        pts.append(f.camera.backproject(depth)[keep])
    return np.concatenate(pts)


def test_browser_drag_a_box_selects_the_object_in_a_held_out_view(viewer, page):
    """Ctrl-drag a box around the blue mug in the 3D view: the box is lifted through the tab's own view
    (a novel viewpoint, not a training frame), and the selection, rendered in the held-out test views,
    covers the mug's ground-truth mask there with IoU >= 0.5."""
    from cos3d.viewer import adapter

    d, app = page, viewer
    client = next(iter(app.server.get_clients().values()))
    scene = app.trained.scene
    inst = next(i for i, names in scene.labels.items() if names and names[0] == "blue mug")
    app.clear()
    app.reset_view(client)
    # the panel back to its top (the answer and the busy line in view for the pictures)
    d.execute_script("document.querySelectorAll('*').forEach(e => { if (e.scrollTop > 0) e.scrollTop = 0; });")
    settle(d)
    step("view reset")
    # the mug's screen box in the tab's current view, from ground-truth points, padded by 1.5 % of the view
    uv = np.array([screen_xy(client, p) for p in gt_points(scene, inst)[::7]])
    lo, hi = np.percentile(uv, 1, axis=0) - 0.015, np.percentile(uv, 99, axis=0) + 0.015
    assert (lo > 0).all() and (hi < 1).all(), (lo, hi)
    canvas = d.find_element(By.TAG_NAME, "canvas")
    size = canvas.size
    x0, y0 = (lo[0] - 0.5) * size["width"], (lo[1] - 0.5) * size["height"]
    dx, dy = (hi[0] - lo[0]) * size["width"], (hi[1] - lo[1]) * size["height"]
    before = app.last_answer
    chain = ActionChains(d).key_down(Keys.CONTROL).move_to_element_with_offset(canvas, int(x0), int(y0))
    chain = chain.click_and_hold()
    for k in (1, 2, 3):
        chain = chain.move_by_offset(int(round(dx / 3)), int(round(dy / 3)))
    chain.perform()
    step("dragged")
    save(d, "viewer_box_drag.png")  # the rectangle being drawn
    ActionChains(d).release().key_up(Keys.CONTROL).perform()
    wait_for(lambda: app.last_answer is not before and app.last_answer is not None
             and app.last_answer.kind == "box", timeout=120, what="the dragged box's answer")
    ans = app.last_answer
    assert ans.error is None and len(ans.objects) == 1, ans
    assert ans.objects[0].name == "blue mug" and "px in the view" in ans.prompt and ans.ms is not None
    assert "blue mug" in app.answer_md.content and "Done: lifting the box in" in app.busy_md.content
    # held out: the selection rendered in the test views against their ground-truth masks
    ious = []
    for f in scene.split("test"):
        gt = f.load_instance() == inst
        if gt.sum() < 30:
            continue
        pred = adapter.selection_mask(app.trained, ans.selected, f.name)
        ious.append(float((pred & gt).sum() / (pred | gt).sum()))
    step(f"dragged box → blue mug, held-out IoU per test view {np.round(ious, 3).tolist()}")
    assert ious and float(np.mean(ious)) >= 0.5, ious
    if os.environ.get("COS3D_SCREENSHOTS"):
        ActionChains(d).move_to_element(d.find_element(By.XPATH, "//*[normalize-space(text())='Connected']")).perform()
        settle(d)
        save(d, "viewer_box.png")


def test_browser_colour_modes_and_frame(viewer, page):
    d, app = page, viewer
    app.query("red coffee mug")
    settle(d)
    rgb = view_pixels(d)
    for mode in ("Instance features (clusters)", "Relevancy (last prompt)"):
        app.set_color_mode(mode)
        settle(d)
        shot = view_pixels(d)
        diff = changed_share(shot, rgb)
        step(f"{mode} changed {diff:.2%} of the view")
        assert diff > 0.02, f"colour mode {mode!r} changed only {diff:.2%} of the view"
        save(d, f"viewer_{mode.split()[0].lower()}.png")
    app.set_color_mode("RGB")
    # a training frame with the answer's mask (what a frustum click shows)
    name = app.frame_names[0]
    shown = app.show_frame(name)
    assert shown.shape[2] == 3 and f"Frame **{name}**" in app.frame_md.content
    assert "pixels (red)" in app.frame_md.content  # the answer's mask is drawn on it
    np.testing.assert_array_equal(app.frame_image.image.shape, shown.shape)
