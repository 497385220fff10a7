"""``cos3d view`` (cos3d/viewer.py): pure helpers, the viewer on a real viser server (no browser), port errors."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cos3d.errors import Cos3dError
from cos3d.gaussians import Gaussians
from cos3d.scene import Camera
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
    assert line.count("no target") == 1


# ----------------------------------------------------------------------------- the app, on a real server
N = 40
SEL = [np.array([0, 1, 2, 3, 5]), np.array([30, 31, 33])]


def _gaussians() -> Gaussians:
    return Gaussians.random(N, sh_degree=1, generator=torch.Generator().manual_seed(0))


class FakeTrained:
    """A stand-in for cos3d.trained.TrainedScene: .gaussians, .scene.cameras, .query(...) -> a real QueryResult."""

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
