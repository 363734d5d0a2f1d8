"""The auto-labeling job submitted with ``ray job submit`` to a two-node local Ray cluster.

Both nodes run on this machine on 127.0.0.1 (``--node-ip-address``; without it Ray binds a
non-loopback address), with token authentication (``RAY_AUTH_MODE=token``; the token is passed
in ``RAY_AUTH_TOKEN``, nothing is written to ``~/.ray``). Each node offers one ``labeler`` slot and
the job asks for two model workers needing one slot each, so one model actor runs on each node.
Every process the test starts is killed by pid at the end (no ``ray stop``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from possam_label.io.coco_panoptic_validate import validate_coco_panoptic
from possam_label.io.output_store import read_images_table

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "autolabel"


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:4])} ... failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_job_submit_on_two_node_cluster(tmp_path: Path, process_reaper) -> None:
    missing = [m for m in ("aiohttp", "aiohttp_cors", "grpc", "prometheus_client") if importlib.util.find_spec(m) is None]
    assert not missing, f"ray job submit needs Ray's dashboard: install ray[default] (missing {missing})"
    ray_cli = str(Path(sys.executable).parent / "ray")
    gcs_port, dashboard_port, client_port, agent_head, agent_worker = _free_ports(5)
    # Socket paths must stay short (AF_UNIX limit), so not under tmp_path.
    head_dir = Path(f"/tmp/ray{secrets.token_hex(3)}")
    worker_dir = Path(f"{head_dir}w")
    process_reaper.add_marker(str(head_dir))
    process_reaper.add_marker(str(worker_dir))
    process_reaper.add_marker(f"127.0.0.1:{gcs_port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
    )
    out = tmp_path / "out"
    try:
        _run(
            [ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=2",
             f"--temp-dir={head_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={client_port}",
             f"--dashboard-agent-listen-port={agent_head}", "--resources={\"labeler\": 1}", "--disable-usage-stats"],
            env, 180,
        )
        _run(
            [ray_cli, "start", f"--address=127.0.0.1:{gcs_port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
             f"--temp-dir={worker_dir}", f"--dashboard-agent-listen-port={agent_worker}",
             "--resources={\"labeler\": 1}", "--disable-usage-stats"],
            env, 180,
        )
        submit = subprocess.run(
            [ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir", str(REPO),
             "--submission-id", f"autolabel-{secrets.token_hex(4)}", "--",
             sys.executable, "-m", "pipelines.autolabel", "--dataset", str(DATA), "--out", str(out),
             "--config", "configs/possam_tiny.yaml", "--batch-size", "1", "--workers", "2",
             # Loopback explicitly: the RAY_ADDRESS the job supervisor sets may name the machine's network address.
             "--ray-address", f"127.0.0.1:{gcs_port}",
             "--worker-resources", '{"labeler": 1}', "--no-progress"],
            env=env, capture_output=True, text=True, timeout=420,
        )
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
        assert "succeeded" in submit.stdout + submit.stderr
        assert f"connecting to the Ray cluster at 127.0.0.1:{gcs_port}" in submit.stdout + submit.stderr
    finally:
        process_reaper.kill_all()
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(worker_dir, ignore_errors=True)

    images = read_images_table(out)
    statuses = images["status"].to_pylist()
    assert images.num_rows == 23 and statuses.count("ok") == 18 and statuses.count("error") == 5
    validate_coco_panoptic(out / "panoptic.json", out / "panoptic")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["ray"]["nodes"] == 2 and run["ray"]["cluster_resources"]["labeler"] == 2.0
    # One model actor per node: two distinct Ray node ids served the images.
    assert len({w["node_id"] for w in run["model"]["workers"]}) == 2
    assert run["execution"]["workers"] == 2
