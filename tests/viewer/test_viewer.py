"""``cos3d view`` (cos3d/viewer.py): pure helpers, the viewer on a real viser server (no browser), port errors."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.data.gaussians import Gaussians
from cos3d.data.scene import Camera
from cos3d.viewer import (
    Answer,
    ViewerApp,
    answer_query,
    box_pose,
    check_port_free,
    format_answer,
    frustum_pose,
    guess_up_direction,
    object_colors,
    quats_scales_to_covariances,
    start_server,
    tint_rgbs,
    top_opacity_ids,
)

viser = pytest.importorskip("viser")
import viser.transforms as vtf  # noqa: E402
from cos3d.vision.image_prompt import ImagePrompt  # noqa: E402


# ----------------------------------------------------------------------------- pure helpers
def test_covariance_is_R_S_St_Rt():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(20, 4)) * rng.uniform(0.2, 3.0, size=(20, 1))  # not unit length
    s = rng.uniform(0.01, 0.5, size=(20, 3))
    cov = quats_scales_to_covariances(q, s)
    assert cov.shape == (20, 3, 3) and cov.dtype == np.float32
    for i in range(20):
        R = vtf.SO3(q[i] / np.linalg.norm(q[i])).as_matrix()  # an independent quaternion convention (wxyz)
        S = np.diag(s[i])
        np.testing.assert_allclose(cov[i], R @ S @ S.T @ R.T, rtol=1e-5, atol=1e-7)
    # torch tensors in (as Gaussians hold them) give the same
    np.testing.assert_array_equal(quats_scales_to_covariances(torch.tensor(q), torch.tensor(s)), cov)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        quats_scales_to_covariances(q[:, :3], s)


def test_tint_changes_exactly_the_selected_rows():
    rng = np.random.default_rng(1)
    rgbs = rng.uniform(0, 1, size=(30, 3)).astype(np.float32)
    before = rgbs.copy()
    colors = object_colors(2)
    rows = [np.array([1, 4, 9]), np.array([9, 20])]  # row 9 in both: the first (better) object wins
    out = tint_rgbs(rgbs, rows, colors, strength=0.7)
    np.testing.assert_array_equal(rgbs, before)  # input untouched
    changed = np.flatnonzero(np.any(out != rgbs, axis=1))
    np.testing.assert_array_equal(changed, [1, 4, 9, 20])
    np.testing.assert_allclose(out[9], 0.3 * rgbs[9] + 0.7 * colors[0], rtol=1e-6)
    np.testing.assert_allclose(out[20], 0.3 * rgbs[20] + 0.7 * colors[1], rtol=1e-6)
    np.testing.assert_allclose(tint_rgbs(rgbs, rows, colors, strength=1.0)[[1, 4]], colors[[0, 0]])
    dimmed = tint_rgbs(rgbs, rows, colors, others=0.5)
    np.testing.assert_allclose(dimmed[0], 0.5 * rgbs[0])
    np.testing.assert_array_equal(dimmed[[1, 4, 9, 20]], out[[1, 4, 9, 20]])
    np.testing.assert_array_equal(tint_rgbs(rgbs, [], colors), rgbs)


def test_object_colors_and_top_opacity():
    c = object_colors(12)
    assert c.shape == (12, 3) and c.min() >= 0 and c.max() <= 1
    assert len({tuple(np.round(x, 3)) for x in c}) == 12
    np.testing.assert_array_equal(object_colors(12)[:5], object_colors(5))
    op = np.array([0.1, 0.9, 0.5, 0.95, 0.2])
    np.testing.assert_array_equal(top_opacity_ids(op, 2), [1, 3])
    np.testing.assert_array_equal(top_opacity_ids(op, 10), np.arange(5))


def test_box_and_frustum_poses():
    R = vtf.SO3.from_rpy_radians(0.3, -0.2, 1.1).as_matrix()
    wxyz, pos, dims = box_pose(np.array([1.0, 2.0, 3.0]), R, np.array([0.2, 0.0, 0.1]))
    np.testing.assert_allclose(vtf.SO3(wxyz).as_matrix(), R, atol=1e-9)
    np.testing.assert_array_equal(pos, [1, 2, 3])
    assert dims[0] == pytest.approx(0.2) and dims[1] > 0  # flat box stays visible
    c2w = np.eye(4)
    c2w[:3, :3] = R
    c2w[:3, 3] = [0.5, 0.0, 1.0]
    cam = Camera(K=[[100, 0, 63.5], [0, 100, 47.5], [0, 0, 1]], c2w=c2w, width=128, height=96)
    fov, aspect, wxyz, pos = frustum_pose(cam)
    assert fov == pytest.approx(2 * np.arctan(48 / 100)) and aspect == pytest.approx(128 / 96)
    np.testing.assert_allclose(vtf.SO3(wxyz).as_matrix(), R, atol=1e-9)
    np.testing.assert_array_equal(pos, [0.5, 0.0, 1.0])
    down = np.eye(4)  # OpenCV camera: +y is down, so an identity camera says the world's up is −y
    np.testing.assert_allclose(guess_up_direction([down, down]), [0, -1, 0])
    assert guess_up_direction([]) is None


def test_format_answer_lines():
    a = Answer(prompt="red <b>mug</b>", objects=[], no_target=True, reason="presence 0.1 < 0.3", ms=12.0)
    line = format_answer(a)
    assert "no target" in line and "presence 0.1 &lt; 0.3" in line and "12 ms" in line and "<b>" not in line
    assert "error: empty" in format_answer(Answer(prompt="", error="empty text prompt"))
    line = format_answer(Answer(prompt="cat", no_target=True, reason="no target: nothing matches 'cat'"))
    assert line.count("no target") == 1 and "not here" in line
    line = format_answer(Answer(prompt="cat", no_target=True, reason="presence below", score=0.21, threshold=0.3))
    assert "not here" in line and "top candidate scored 0.210 (needs 0.300)" in line


# ----------------------------------------------------------------------------- the app, on a real server
N = 40
SEL = [np.array([0, 1, 2, 3, 5]), np.array([30, 31, 33])]


def _gaussians() -> Gaussians:
    return Gaussians.random(N, sh_degree=1, generator=torch.Generator().manual_seed(0))


class FakeTrained:
    """A stand-in for cos3d.pipeline.trained.TrainedScene: .gaussians, .scene.cameras, .query(...) -> a real QueryResult."""

    def __init__(self):
        self.gaussians = _gaussians()
        c2w = np.eye(4)
        c2w[:3, 3] = [0.0, 0.0, -2.0]
        self.scene = SimpleNamespace(cameras=[Camera(K=[[60, 0, 31.5], [0, 60, 23.5], [0, 0, 1]], c2w=c2w,
                                                     width=64, height=48)])
        self.calls = []

    def query(self, text=None, **kw):
        from cos3d.query.engine import QueryResult
        from cos3d.query.objects import Object3D, OrientedBox

        self.calls.append((text, kw))
        if not text:
            raise Cos3dError('empty text prompt: give a phrase such as "red mug"')
        if text == "elephant":
            return QueryResult(query=text, objects=[], selected=torch.zeros(0, dtype=torch.long),
                               no_target=True, reason="presence score 0.02 below 0.31", timings={"total": 3.0})
        objs = []
        for k, ids in enumerate(SEL):
            box = OrientedBox(center=np.full(3, 0.1 * k), R=np.eye(3), extent=np.array([0.3, 0.2, 0.1]))
            objs.append(Object3D(id=int(ids[0]), gaussians=torch.tensor(ids), score=0.9 - 0.1 * k,
                                 centroid=np.zeros(3), box=box, points=np.zeros((len(ids), 3), np.float32)))
        return QueryResult(query=text, objects=objs, selected=torch.tensor(np.concatenate(SEL)),
                           no_target=False, reason="2 objects", timings={"total": 7.5})


@pytest.fixture
def server():
    s = start_server("127.0.0.1", 0)
    yield s
    s.stop()


def test_viewer_query_highlights_boxes_and_clears(server):
    trained = FakeTrained()
    app = ViewerApp(server, trained, max_splats=30)  # 10 Gaussians capped out
    shown = app.splats.ids
    assert len(shown) == 30 and len(app.frustum_handles) == 1
    assert set(shown) == set(np.argsort(-trained.gaussians.opacities.numpy())[:30])
    app.warm_up()
    assert app.answer_md.content.startswith("Ready") and len(trained.calls) == 1 and not app.history
    base = app.splats.rgbs.copy()
    np.testing.assert_allclose(base, trained.gaussians.rgb().numpy()[shown], atol=1e-6)

    ans = app.query("red mug")
    assert [o.id for o in ans.objects] == [0, 30] and ans.ms == 7.5
    sel_rows = [app.row_of[ids] for ids in SEL]
    expect_rows = np.sort(np.concatenate([r[r >= 0] for r in sel_rows]))
    changed = np.flatnonzero(np.any(app.rgbs != base, axis=1))
    np.testing.assert_array_equal(changed, expect_rows)
    # what was sent to viser is the tinted colours (uint8)
    assert np.abs(app.splat_handle.rgbs.astype(int) - np.round(app.rgbs * 255).astype(int)).max() <= 1
    assert len(app.box_handles) == 2
    np.testing.assert_allclose(app.box_handles[1].position, [0.1, 0.1, 0.1])
    hidden = sum(int((r < 0).sum()) for r in sel_rows)
    n_points = sum(1 for h in app.overlay_handles if "points" in h.name)
    assert (n_points > 0) == (hidden > 0)  # capped-out selected Gaussians are drawn as points
    assert "2 objects" in app.answer_md.content and "#30" in app.answer_md.content and "8 ms" in app.answer_md.content

    ans = app.query("elephant")
    assert ans.no_target and not app.box_handles and not app.overlay_handles
    np.testing.assert_array_equal(app.rgbs, base)
    assert "no target" in app.answer_md.content and "below 0.31" in app.answer_md.content

    ans = app.query("   ")
    assert ans.error and "empty text prompt" in app.answer_md.content

    app.query("head", within="robot")
    app.query("head", within="#30")
    assert trained.calls[-2] == ("head", {"within": "robot", "within_object": None})
    assert trained.calls[-1] == ("head", {"within": None, "within_object": 30})
    assert len(app.history) == 5 and app.history[0].startswith("**head**")
    assert app.history_md.content.count("\n- ") == 4

    app.clear()
    assert not app.box_handles and app.last_answer is None
    np.testing.assert_array_equal(app.rgbs, base)
    app.set_cameras_visible(False)
    assert not app.frustum_handles[0].visible


def test_adapter_reads_a_real_query_result():
    """The adapter against the real QueryResult / Object3D classes (catches API drift in cos3d.query)."""
    from cos3d.query.engine import QueryResult
    from cos3d.query.objects import make_object

    g = _gaussians()
    objs = [make_object(torch.tensor(ids), g.means, g.opacities, torch.rand(N)) for ids in SEL]
    res = QueryResult(query="mugs", objects=objs, selected=torch.tensor(np.sort(np.concatenate(SEL))),
                      no_target=False, reason="ok", timings={"total": 4.0})
    ans = answer_query(SimpleNamespace(query=lambda **kw: res), "mugs")
    assert ans.prompt == "mugs" and ans.ms == 4.0 and not ans.no_target
    np.testing.assert_array_equal(ans.objects[0].gaussians, SEL[0])
    center, R, extent = ans.objects[1].box
    np.testing.assert_allclose(R, objs[1].box.R)
    np.testing.assert_allclose(extent, objs[1].box.extent)
    np.testing.assert_allclose(center, objs[1].box.center)


# ----------------------------------------------------------------------------- errors
def _listening_socket() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def test_port_in_use_is_one_line_naming_the_flag(capsys):
    from cos3d.cli import entrypoint

    s, port = _listening_socket()
    with s:
        with pytest.raises(Cos3dError, match=rf"port {port}.*--port"):
            check_port_free("127.0.0.1", port)
        with pytest.raises(Cos3dError, match="--port"):
            start_server("127.0.0.1", port)
        rc = entrypoint(["view", "--run", "no/such/run", "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and str(port) in err and "--port" in err and len(err.strip().splitlines()) == 1


def test_unknown_run_and_bad_flags(capsys, tmp_path):
    from cos3d.cli import entrypoint

    assert entrypoint(["view", "--run", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert entrypoint(["view", "--run", str(tmp_path), "--max-splats", "0"]) == 2
    assert "--max-splats" in capsys.readouterr().err


# ----------------------------------------------------------------------------- framing, colours, clicks
def _ring_cameras(n=12, radius=0.8, height=0.5, focus=(0.0, 0.0, 0.0)):
    """Cameras on a ring above ``focus``, each looking at it (OpenCV axes, world +z up)."""
    out = []
    f = np.asarray(focus, float)
    for k in range(n):
        a = 2 * np.pi * k / n
        c = f + np.array([radius * np.cos(a), radius * np.sin(a), height])
        z = (f - c) / np.linalg.norm(f - c)
        x = np.cross(z, [0, 0, 1.0])
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        T = np.eye(4)
        T[:3, :3] = np.stack([x, y, z], 1)
        T[:3, 3] = c
        out.append(T)
    return out


def test_first_view_frames_the_scene_and_ignores_floaters():
    from cos3d.viewer.helpers import axes_focus, scene_framing

    rng = np.random.default_rng(0)
    table = rng.uniform([-0.4, -0.3, 0.0], [0.4, 0.3, 0.15], size=(3000, 3))
    floaters = rng.normal(0, 40.0, size=(60, 3)) + 100.0  # far away, as badly trained 3DGS leaves them
    cams = _ring_cameras(focus=(0.0, 0.0, 0.05))
    np.testing.assert_allclose(axes_focus(cams), [0, 0, 0.05], atol=1e-9)
    fr = scene_framing(np.concatenate([table, floaters]), cams)
    assert not fr.inliers[-60:].any() and fr.inliers[:3000].mean() > 0.85
    np.testing.assert_allclose(fr.look_at, [0, 0, 0.05], atol=1e-6)
    dist = np.linalg.norm(fr.position - fr.look_at)
    cam_dist = np.linalg.norm(cams[0][:3, 3] - fr.look_at)
    assert 0.7 * cam_dist < dist < cam_dist  # just in front of a training camera: no frustum in the way
    assert fr.extent < 2.0  # the table's size, not the floaters'
    assert fr.frustum_scale < 0.1 * cam_dist and fr.axes_length < 0.2 * cam_dist
    np.testing.assert_allclose(fr.up, [0, 0, 1], atol=0.05)
    # the same with the floaters gone: the same view
    fr2 = scene_framing(table, cams)
    np.testing.assert_allclose(fr2.position, fr.position, atol=1e-6)
    # no cameras: the content's robust box, from +z
    fr3 = scene_framing(table, [])
    assert fr3.position[2] > fr3.look_at[2] and fr3.extent < 1.5


def test_ray_camera_centre_pixel_lies_on_the_ray():
    from cos3d.viewer.helpers import ray_camera

    o, d = np.array([0.3, -0.2, 1.0]), np.array([0.1, 0.5, -1.0])
    cam = ray_camera(o, d)
    p = o + 2.0 * d / np.linalg.norm(d)  # a point on the ray
    w2c = np.linalg.inv(cam.c2w)
    q = w2c[:3, :3] @ p + w2c[:3, 3]
    uv = (cam.K @ (q / q[2]))[:2]
    np.testing.assert_allclose(uv, [(cam.width - 1) / 2] * 2, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(cam.c2w[:3, :3]), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="non-zero"):
        ray_camera(o, [0, 0, 0])


def test_colour_modes_pure():
    from cos3d.viewer.helpers import heatmap_colors, label_colors, pca_colors

    h = heatmap_colors(np.array([0.0, 0.5, 1.0, 2.0]), lo=0.0, hi=1.0)
    assert h.shape == (4, 3) and h.dtype == np.float32
    np.testing.assert_allclose(h[2], h[3])  # clipped above hi
    assert h[0, 2] > h[0, 0] and h[2, 0] > h[2, 2]  # low blue, high red
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    feats = np.concatenate([c + 0.01 * rng.normal(size=(50, 16)) for c in centres])
    cols = pca_colors(feats)
    assert cols.shape == (150, 3) and cols.min() >= 0 and cols.max() <= 1
    means = np.stack([cols[i * 50:(i + 1) * 50].mean(0) for i in range(3)])
    spread = max(cols[i * 50:(i + 1) * 50].std(0).max() for i in range(3))
    assert min(np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i)) > 5 * spread
    base = np.full((5, 3), 0.8, np.float32)
    lab = label_colors(np.array([0, 1, 2, 2, 0]), base)
    np.testing.assert_allclose(lab[0], 0.35 * 0.8, rtol=1e-6)
    np.testing.assert_allclose(lab[2], lab[3])
    np.testing.assert_allclose(lab[1], object_colors(2)[0])


def test_parse_box_points_and_draw():
    from cos3d.viewer.app import _parse_points
    from cos3d.viewer.helpers import draw_prompt, parse_box

    assert parse_box("", 64, 48) is None
    assert parse_box("50, 40, 10, 5", 64, 48) == [10, 5, 50, 40]
    assert parse_box("0,0,100,100", 64, 48) == [0, 0, 64, 48]
    with pytest.raises(ValueError, match="four numbers"):
        parse_box("1,2,3", 64, 48)
    with pytest.raises(ValueError, match="empty"):
        parse_box("70,0,90,10", 64, 48)
    np.testing.assert_array_equal(_parse_points("3,4; 5,6"), [[3, 4], [5, 6]])
    with pytest.raises(ValueError, match="x,y"):
        _parse_points("3;4")
    img = np.zeros((48, 64, 3), np.uint8)
    m = np.zeros((48, 64), bool)
    m[10:20, 10:20] = True
    out = draw_prompt(img, box=[5, 5, 30, 30], points=np.array([[40, 40]]), mask=m)
    assert out[5, 10].tolist() == [40, 230, 40] and out[40, 40].tolist() == [255, 220, 0]
    assert out[15, 15, 0] > 100 and not img.any()


def test_combine_adds_and_removes_objects():
    from cos3d.viewer.adapter import ObjectView, combine

    def obj(i, ids):
        return ObjectView(id=i, gaussians=np.array(ids), score=0.5, centroid=np.zeros(3),
                          box=(np.zeros(3), np.eye(3), np.ones(3)))

    a = Answer(prompt="click", objects=[obj(1, [1, 2, 3])], selected=np.array([1, 2, 3]), kind="click")
    b = Answer(prompt="click", objects=[obj(7, [7, 8])], selected=np.array([7, 8]), kind="click")
    ab = combine(a, b, "add")
    assert [o.id for o in ab.objects] == [1, 7] and ab.selected.tolist() == [1, 2, 3, 7, 8] and ab.kind == "selection"
    assert [o.id for o in combine(ab, b, "add").objects] == [1, 7]  # adding twice adds once
    rest = combine(ab, Answer(prompt="click", objects=[obj(2, [2])], selected=np.array([2])), "remove")
    assert [o.id for o in rest.objects] == [7] and rest.selected.tolist() == [7, 8]
    err = combine(ab, Answer(prompt="click", error="no Gaussian covers pixel"), "add")
    assert [o.id for o in err.objects] == [1, 7] and "no Gaussian" in err.error
    with pytest.raises(ValueError):
        combine(a, b, "toggle")


class ClickableFake(FakeTrained):
    """FakeTrained whose clicks return the object whose Gaussians lie nearest the clicked ray."""

    def query(self, text=None, **kw):
        click = kw.get("click")
        if click is None:
            return super().query(text, **kw)
        from cos3d.query.engine import QueryResult
        from cos3d.query.objects import make_object

        self.calls.append(("click", {k: v for k, v in kw.items() if k != "click"}))
        cam = click[0]
        o, d = cam.c2w[:3, 3], cam.c2w[:3, 2]
        means = self.gaussians.means.numpy()
        v = means - o
        dist = np.linalg.norm(v - (v @ d)[:, None] * d, axis=1)
        ids = next(s for s in SEL if int(np.argmin(dist)) in s) if any(int(np.argmin(dist)) in s for s in SEL) else None
        if ids is None:
            raise Cos3dError("no Gaussian covers pixel (16, 16) of that view (empty background); click on an object")
        obj = make_object(torch.tensor(ids), self.gaussians.means, self.gaussians.opacities, torch.ones(N))
        return QueryResult(query="click", objects=[obj], selected=obj.gaussians, no_target=False, reason="clicked",
                           timings={"total": 2.0}, kind="click")


def test_app_click_add_remove_colour_and_export(server, tmp_path):
    from cos3d.data.ply import read_ply

    trained = ClickableFake()
    trained.fields = {"l": SimpleNamespace(instance=torch.nn.functional.normalize(torch.randn(N, 16), dim=1))}
    app = ViewerApp(server, trained, export_dir=tmp_path)
    means = trained.gaussians.means.numpy()
    eye = np.array([0.0, 0.0, -5.0])

    def ray_to(gid):
        return eye, means[gid] - eye

    a = app.click(*ray_to(SEL[0][1]))
    assert a.kind == "click" and a.objects[0].id == SEL[0][0] and len(app.box_handles) == 1
    b = app.click(*ray_to(SEL[1][0]), "add")
    assert b.kind == "selection" and sorted(o.id for o in b.objects) == [0, 30]
    assert "Focus #30" in [h.label for h in app.object_handles]
    c = app.click(*ray_to(SEL[0][2]), "remove")
    assert [o.id for o in c.objects] == [30] and set(c.selected) == set(SEL[1])

    app.focus(0)  # no client connected: nothing to move, no error
    with pytest.raises(Cos3dError):
        app.focus(5)
    # colour modes: PCA changes the shown colours; relevancy needs a text prompt first
    rgb = app.rgbs.copy()
    app.set_color_mode("Instance features (clusters)")
    assert np.abs(app.rgbs - rgb).max() > 0.05
    with pytest.raises(Cos3dError, match="no text prompt"):
        app.set_color_mode("Relevancy (last prompt)")
    assert app.color_mode == "Instance features (clusters)"
    app.set_color_mode("RGB")

    ply, = app.export("ply")
    g = read_ply(ply)
    assert g.num == len(SEL[1])
    np.testing.assert_allclose(g.means.numpy(), means[np.sort(SEL[1])], atol=1e-6)
    js, = app.export("json")
    import json

    data = json.loads(js.read_text())
    assert [o["id"] for o in data["objects"]] == [30] and data["objects"][0]["num_gaussians"] == len(SEL[1])
    assert "Wrote" in app.export_md.content
    with pytest.raises(Cos3dError, match="run folder"):
        app.export("labels")  # a fake run has no run folder
    app.clear()
    with pytest.raises(Cos3dError, match="nothing selected"):
        app.export("ply")
    # a click on the background is an error line, not a crash
    bad = app.click(eye, np.array([0.0, 50.0, 1.0]))
    assert bad.error and "click on an object" in app.answer_md.content
    # work submitted from the page runs on the worker and reports errors in the busy line
    fut = app.submit(app.export, "ply")
    assert fut.result(timeout=30) is None and "nothing selected" in app.busy_md.content
    # ... and its time when done; a click from the page names its pixel and level
    done = app.submit(app.click, *ray_to(SEL[1][0]), "replace", (12.2, 30.7), "l").result(timeout=30)
    assert done.prompt == "click at (12, 31) px · level l" and "level" in str(trained.calls[-1])
    assert app.busy_md.content.startswith("Ready. Done: segmenting the click in") and not app.progress.visible
    app.reset_view()  # no tab connected: nothing to move, no error
    app.go_to_camera(app.frame_names[0])
    with pytest.raises(Cos3dError, match="no camera named"):
        app.go_to_camera("nope")
    app.close()


# ----------------------------------------------------------------------------- the command
def test_view_flags_come_from_the_config(capsys):
    from cos3d.cli import entrypoint
    import dataclasses

    from cos3d.core.config import flag_name
    from cos3d.viewer import ViewConfig

    with pytest.raises(SystemExit):
        entrypoint(["view", "--help"])
    help_text = capsys.readouterr().out
    for f in dataclasses.fields(ViewConfig):
        assert flag_name(f.name) in help_text, f.name
    assert "--no-cameras" in help_text and "every interface" in help_text


def test_non_loopback_host_warns_and_prints_addresses(monkeypatch):
    from cos3d.viewer import server as srv

    real_addresses = srv.interface_addresses
    assert srv.exposure_warning("127.0.0.1", 8080) is None and srv.exposure_warning("localhost", 1) is None
    w = srv.exposure_warning("0.0.0.0", 8080)
    assert w.count("\n") == 0 and "anyone who can reach" in w and "query" in w and "export" in w
    monkeypatch.setattr(srv, "interface_addresses", lambda: ["10.1.2.3", "127.0.0.1"])
    assert srv.viewer_urls("0.0.0.0", 8080) == ["http://10.1.2.3:8080", "http://127.0.0.1:8080"]
    assert srv.viewer_urls("127.0.0.1", 8080) == ["http://localhost:8080"]
    assert srv.viewer_urls("192.168.0.5", 81) == ["http://192.168.0.5:81"]
    # serve() on every interface: the warning line, then the real addresses
    lines = []
    app = srv.serve(FakeTrained(), host="0.0.0.0", port=0, block=False, log=lines.append)
    try:
        port = app.server.get_port()
        assert lines[0].startswith("cos3d view: warning:") and f"0.0.0.0:{port}" in lines[0]
        assert f"http://10.1.2.3:{port}" in lines[1] and f"http://127.0.0.1:{port}" in lines[1]
    finally:
        app.server.stop()
        app.close()
    assert real_addresses()[-1] == "127.0.0.1"


def test_a_million_gaussians_load_subsampled_with_the_count_shown(server):
    g = Gaussians.random(1_000_000, sh_degree=0, generator=torch.Generator().manual_seed(0))
    app = ViewerApp(server, SimpleNamespace(gaussians=g, scene=SimpleNamespace(cameras=[])), max_splats=200_000)
    assert len(app.splats.ids) == 200_000 and app.splats.centers.shape == (200_000, 3)
    assert "200,000 splats (the 200,000 most opaque of 1,000,000)" in app.count_md.content
    app.close()


def test_real_run_image_prompt_scene_objects_and_labels_export(trained_run, server, tmp_path):
    """The paths the browser test does not drive, on the session's trained tabletop: an image prompt (a
    box on a scene frame), the scene-wide objects colour mode, the labels export (cos3d export's writer)
    and a frame with the answer's mask."""
    import json

    import cos3d
    from cos3d.viewer.adapter import selection_mask

    ts = cos3d.load(trained_run, device="cpu")
    app = ViewerApp(server, ts, export_dir=tmp_path, max_splats=5000)
    mug = app.query("red coffee mug")
    assert mug.objects and mug.error is None
    frame = next(f.name for f in ts.scene.frames if selection_mask(ts, mug.selected, f.name).sum() > 50)
    ys, xs = np.nonzero(selection_mask(ts, mug.selected, frame))
    img = app.query_image(frame, ImagePrompt(box=[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]))
    assert img.error is None and img.kind == "image", img
    assert np.intersect1d(img.selected, mug.selected).size >= 0.5 * len(mug.selected)
    shown = app.show_frame(frame)  # what a frustum click shows: the frame with the answer's mask
    cam = ts.scene.frame(frame).camera
    assert shown.shape == (cam.height, cam.width, 3) and "pixels (red)" in app.frame_md.content
    assert app.query_image(frame).error  # no box, no points: a message, not a crash
    app.set_color_mode("Objects (scene-wide)")
    assert "table" in app.count_md.content and (app.decomposition_labels > 0).any()
    paths = app.export("labels")
    assert {p.name for p in paths} >= {"labels.ply", "labels.json", "labels.npz"}
    names = [o["names"][0] for o in json.loads((tmp_path / "labels.json").read_text())["objects"]]
    assert "red coffee mug" in names
    # the object list (the same decomposition): named rows; hiding one zeroes its splats' opacity; selecting
    # one makes it the answer, with its name on the box
    objs = app.list_objects()
    k = next(i for i, o in enumerate(objs) if o.name == "red coffee mug")
    app.set_object_visible(k, False)
    rows = app.row_of[objs[k].gaussians]
    rows = rows[rows >= 0]
    shown_op = app.splat_handle.opacities.reshape(-1).astype(int)  # uint8, as sent to the browser
    want = np.round(app.splats.opacities.reshape(-1) * 255).astype(int)
    assert len(rows) and np.all(shown_op[rows] == 0)
    others = np.setdiff1d(np.arange(len(app.splats.ids)), rows)
    assert np.abs(shown_op[others] - want[others]).max() <= 1  # the rest untouched
    app.set_object_visible(k, True)
    assert np.abs(app.splat_handle.opacities.reshape(-1).astype(int) - want).max() <= 1
    sel = app.select_object(k)
    assert sel.objects[0].name == "red coffee mug" and "red coffee mug" in app.answer_md.content
    app.close()


def test_real_run_box_on_a_novel_view_is_lifted_through_that_view(trained_run, server):
    """A box on a viewpoint no frame has (a training camera raised and turned, at another size) is lifted
    through that view's own blending weights; its object matches the ground truth in the held-out test
    views (oracle-2D run; the test reads ground truth, the viewer does not). A click answer names its
    pixel and level; relevancy honours the threshold slider."""
    import cos3d
    from cos3d.viewer.adapter import selection_mask
    from cos3d.viewer.helpers import rotmat_to_wxyz, view_camera

    ts = cos3d.load(trained_run, device="cpu")
    app = ViewerApp(server, ts, max_splats=5000)
    sc = ts.scene
    inst = next(i for i, n in sc.labels.items() if n and n[0] == "white bowl")
    base = sc.frame(sc.split("train")[5].name).camera  # a frame that sees the bowl unoccluded
    R = vtf.SO3.from_z_radians(0.15).as_matrix() @ base.c2w[:3, :3]  # turned about the world z
    pos = base.c2w[:3, 3] + np.array([0.0, 0.0, 0.05])
    cam = view_camera(rotmat_to_wxyz(R), pos, 2 * np.arctan(base.height / 2 / base.K[1, 1]), 640, 480)
    assert (cam.width, cam.height) == (256, 192)
    pts = []
    for f in sc.split("train"):
        d, m = f.load_depth(), f.load_instance() == inst
        pts.append(f.camera.backproject(d)[m & (d > 0)])
    uv, z = cam.project(np.concatenate(pts))
    lo, hi = np.percentile(uv[z > 0], 1, axis=0) - 3, np.percentile(uv[z > 0], 99, axis=0) + 3
    assert (lo > 0).all() and hi[0] < cam.width and hi[1] < cam.height
    ans = app.box_select(cam, [*lo, *hi], (1.0, 2.0, 3.0, 4.0), "l")
    assert ans.kind == "box" and ans.error is None and len(ans.objects) == 1, ans
    assert ans.objects[0].name == "white bowl" and "box (1, 2)–(3, 4) px" in app.answer_md.content
    ious = []
    for f in sc.split("test"):
        gt = f.load_instance() == inst
        if gt.sum() >= 30:
            pred = selection_mask(ts, ans.selected, f.name)
            ious.append((pred & gt).sum() / (pred | gt).sum())
    assert ious and np.mean(ious) >= 0.5, ious
    # a click names its pixel and level
    c = app.click(pos, np.concatenate(pts).mean(0) - pos, "replace", (321.4, 99.6), "s")
    assert c.prompt == "click at (321, 100) px · level s" and c.error is None and c.objects
    # level s picks the part under the cursor and names it from the part vocabulary; level l the whole object
    head = next(i for i, p in sc.parts.items() if p.names[0] == "head")
    fr = next(f for f in sc.split("train") if (f.load_part() == head).sum() >= 40)
    ys, xs = np.nonzero(fr.load_part() == head)
    k = int(np.argmin((xs - np.median(xs)) ** 2 + (ys - np.median(ys)) ** 2))
    K, c2w = fr.camera.K, fr.camera.c2w
    ray = c2w[:3, :3] @ np.array([(xs[k] - K[0, 2]) / K[0, 0], (ys[k] - K[1, 2]) / K[1, 1], 1.0])
    part, whole = app.click(c2w[:3, 3], ray, level="s"), app.click(c2w[:3, 3], ray, level="l")
    assert part.objects[0].name == "head" and whole.objects[0].name == "toy robot"
    assert len(part.selected) < 0.5 * len(whole.selected)
    # relevancy mode: the threshold slider greys what is below it
    app.query("white bowl")
    app.set_color_mode("Relevancy (last prompt)")
    all_heat = app.rgbs.copy()
    app.threshold_slider.value = 0.6
    app.redraw()
    v = app._rel_values[1]
    below = v < 0.6
    assert below.any() and (~below).any()
    np.testing.assert_allclose(app.rgbs[below], 0.3 * app.splats.rgbs[below], atol=1e-6)
    np.testing.assert_allclose(app.rgbs[~below], all_heat[~below], atol=1e-6)
    assert "≥ 0.60" in app.colorbar_md.content
    app.close()


def test_highlight_upright_boxes_pca_and_view_camera_pure():
    from cos3d.viewer.helpers import contrast_colors, display_box, pca_colors, upright_box, view_camera

    # a highlight contrasts with the object's own colour: never red on a red can, never blue on a blue mug
    red, blue = np.array([[0.8, 0.1, 0.1]] * 5), np.array([[0.05, 0.1, 0.45]] * 5)
    c = contrast_colors([red, blue])
    assert np.linalg.norm(c[0] - red[0]) > 0.9 and np.linalg.norm(c[1] - blue[0]) > 0.9
    assert not np.allclose(c[0], c[1])  # two objects, two colours
    # PCA colours: never near-black, clusters still apart
    rng = np.random.default_rng(3)
    feats = np.concatenate([cc + 0.01 * rng.normal(size=(40, 16)) for cc in rng.normal(size=(8, 16))])
    cols = pca_colors(feats)
    assert cols.max(1).min() >= 0.5
    # instance colours: 2 big instances (a floor, a table) and 8 small ones all get their own colour
    from cos3d.viewer.helpers import instance_colors

    centres = rng.normal(size=(10, 16))
    sizes = [4000, 3000] + [60] * 8
    feats = np.concatenate([c + 0.02 * rng.normal(size=(m, 16)) for c, m in zip(centres, sizes)])
    cols = instance_colors(feats)
    starts = np.cumsum([0] + sizes)
    means = np.stack([cols[starts[i]:starts[i + 1]].mean(0) for i in range(10)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=2) + 9 * np.eye(10)
    assert dist.min() > 0.15 and cols.max(1).min() >= 0.6
    # an upright can (a cylinder along +z) whose points lean: its box stands on the up axis and covers it
    t = rng.uniform(0, 2 * np.pi, 400)
    h = rng.uniform(0, 0.12, 400)
    can = np.stack([0.033 * np.cos(t), 0.033 * np.sin(t), h], 1) + [0.3, 0.1, 0.0]
    center, R, ext = upright_box(can, np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(R[:, 2], [0, 0, 1], atol=1e-9)
    local = (can - center) @ R
    assert np.all(np.abs(local) <= ext / 2 + 1e-9) and ext[2] == pytest.approx(np.ptp(h), rel=1e-6)
    tilted = (center, vtf.SO3.from_x_radians(0.3).as_matrix(), ext * 1.05)
    assert np.allclose(display_box(can, tilted, np.array([0.0, 0.0, 1.0]))[1][:, 2], [0, 0, 1])
    assert display_box(can, tilted, None) is tilted  # no known up: the object's own box
    # a long stick lying diagonally across the up axis keeps its own (PCA) box: upright would be far bigger
    s = np.linspace(0, 1, 100)[:, None] * np.array([[0.3, 0.0, 0.3]])
    own = (s.mean(0), vtf.SO3.from_y_radians(-np.pi / 4).as_matrix(), np.array([0.43, 0.01, 0.01]))
    assert display_box(s, own, np.array([0.0, 0.0, 1.0])) is own
    # the tab's view as a camera: a world point lands where viser's camera model puts it
    wxyz = vtf.SO3.from_rpy_radians(0.2, -0.3, 0.1).wxyz
    cam = view_camera(wxyz, [0.1, -0.2, 0.3], np.deg2rad(50.0), 900, 600)
    assert (cam.width, cam.height) == (256, 171)
    p = np.array([0.1, -0.2, 0.3]) + vtf.SO3(wxyz).as_matrix() @ np.array([0.05, -0.02, 1.0])
    uv, _ = cam.project(p[None])
    f = 0.5 * 600 / np.tan(np.deg2rad(25.0))
    fx, fy = (450 + f * 0.05) / 900, (300 - f * 0.02) / 600  # fractions of the canvas
    assert uv[0, 0] / cam.width == pytest.approx(fx, abs=2 / 256) and uv[0, 1] / cam.height == pytest.approx(fy, abs=2 / 171)


def test_real_run_box_drawn_on_the_uploaded_image_in_the_scene(trained_run, server):
    """An uploaded reference image (here a held-out test frame's photo) is shown in the 3D scene; a
    rectangle dragged over the mug on it (screen corners, as a ctrl-drag reports them) becomes a box on the
    image's pixels and an image prompt whose answer matches the mug's ground truth in another held-out view
    (oracle-2D run: the labels embedder names what the box covers)."""
    import cos3d
    from cos3d.viewer.adapter import selection_mask
    from cos3d.viewer.helpers import rotmat_to_wxyz, view_camera

    ts = cos3d.load(trained_run, device="cpu")
    app = ViewerApp(server, ts, max_splats=2000)
    sc = ts.scene
    inst = next(i for i, n in sc.labels.items() if n and n[0] == "blue mug")
    ref, other = sc.split("test")[0], sc.split("test")[1]
    img = ref.load_image()
    plane = app.upload(img, "photo.png")
    assert app.reference is plane and len(app.reference_handles) == 2 and app.frame_dropdown.value == "(uploaded image)"
    ys, xs = np.nonzero(ref.load_instance() == inst)
    want = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    # a tab looking at the image plane from the first view's position, 900x600 canvas, 50° vertical fov
    eye = app.framing.position
    z = plane.center - eye
    z /= np.linalg.norm(z)
    y = plane.R[:, 1] - (plane.R[:, 1] @ z) * z
    y /= np.linalg.norm(y)
    R = np.stack([np.cross(y, z), y, z], 1)
    W, H, fov = 900, 600, np.deg2rad(50.0)
    full = view_camera(rotmat_to_wxyz(R), eye, fov, W, H, max_side=900)

    def screen_of(u, v):  # an image pixel → where it is on the tab's canvas, as fractions
        local = np.array([(u / plane.width - 0.5) * plane.render_width, (v / plane.height - 0.5) * plane.render_height, 0])
        uv, _ = full.project((plane.center + plane.R @ local)[None])
        return uv[0] / [W, H]

    np.testing.assert_allclose(plane.pixels_of_screen(full, [screen_of(10.0, 20.0) * [W, H]])[0], [10, 20], atol=1e-6)
    smin, smax = screen_of(want[0], want[1]), screen_of(want[2], want[3])
    ans = app.rect_select(rotmat_to_wxyz(R), eye, fov, W, H, tuple(smin), tuple(smax))
    assert ans.kind == "image" and ans.error is None and ans.objects, ans
    got = np.array([float(v) for v in app.box_text.value.split(",")])
    np.testing.assert_allclose(got, want, atol=1.0)
    gt = other.load_instance() == inst
    pred = selection_mask(ts, ans.selected, other.name)
    assert (pred & gt).sum() / (pred | gt).sum() >= 0.5
    # a rectangle off the image is a box on the view itself, lifted into 3D
    off = app.rect_select(rotmat_to_wxyz(R), eye, fov, W, H, (0.0, 0.0), (0.02, 0.02))
    assert off.kind == "box"
    app.close()
