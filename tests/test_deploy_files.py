"""compose.yaml, the Dockerfile, and the accelerate / DeepSpeed configs: parsed and cross-checked
(no Docker engine runs here; users build the images)."""

import json
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions(path):
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split()[0].upper(), line[len(line.split()[0]) :].strip()) for line in lines]


def test_compose_train_service_runs_the_train_script_on_gpus():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    train = compose["services"]["train"]
    assert train["build"]["dockerfile"] == "docker/Dockerfile"
    assert (ROOT / train["build"]["context"] / train["build"]["dockerfile"]).is_file()
    assert train["command"] == ["bash", "docker/train.sh"]
    assert train["environment"]["CONFIG"] == "${CONFIG:-tiny}"
    devices = train["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["driver"] == "nvidia" and "gpu" in devices["capabilities"]
    mounts = {v.split(":")[1] for v in train["volumes"]}
    assert {"/workspace/kit/data", "/workspace/kit/runs"} <= mounts


def test_compose_serve_services_run_the_api_on_cpu_and_on_a_gpu_profile_and_bench_runs_serve_bench():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("serve", "serve-gpu"):
        command = services[name]["command"][-1]
        assert command.startswith("python -m serve --model $${SERVE_MODEL} --host 0.0.0.0 --port 8000")
        assert services[name]["ports"] == ["${SERVE_PORT:-8000}:8000"]
        assert services[name]["image"] == services["train"]["image"]
    assert "deploy" not in services["serve"] and services["serve-gpu"]["profiles"] == ["gpu"]
    assert services["serve-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "/workspace/kit/exports" in {v.split(":")[1] for v in services["serve"]["volumes"]}
    assert services["bench"]["command"][-1].startswith("python -m serve bench --models $${BENCH_MODELS}")
    default = services["bench"]["environment"]["BENCH_MODELS"]
    assert default == "${BENCH_MODELS:-runs/tiny/student-kd/final runs/tiny/teacher/final}"
    assert "serve,demo" in (ROOT / "docker" / "Dockerfile").read_text().split("pip install")[1].split("\n")[0]
    assert services["demo"]["command"][-1].startswith(
        "python -m demo $${DEMO_ARGS} --host 0.0.0.0 --port 7860"
    )
    assert services["demo"]["ports"] == ["${DEMO_PORT:-7860}:7860"]


def test_dockerfile_builds_on_a_cuda_pytorch_base_and_installs_the_kit():
    instructions = dockerfile_instructions(ROOT / "docker" / "Dockerfile")
    kinds = [kind for kind, _ in instructions]
    assert kinds[0] == "ARG" and kinds[1] == "FROM"
    base = dict(instructions)["ARG"].split("=", 1)[1]
    assert base.startswith("pytorch/pytorch:2.13.0-cuda")  # matches the torch pin of pyproject.toml
    assert "torch==2.13.0" in (ROOT / "pyproject.toml").read_text()
    runs = " ".join(arg for kind, arg in instructions if kind == "RUN")
    assert "pip install" in runs and "train" in runs
    copies = [arg.split()[0] for kind, arg in instructions if kind == "COPY"]
    for source in copies:
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert dict(instructions)["CMD"] == '["bash", "docker/train.sh"]'


def test_train_script_launches_through_accelerate():
    script = (ROOT / "docker" / "train.sh").read_text()
    assert "accelerate launch --config_file" in script
    assert "python -m distill quickstart --launcher accelerate" in script
    assert re.search(r'ACCELERATE_CONFIG="\$\{ACCELERATE_CONFIG:-(configs/accelerate/zero2.yaml)\}"', script)
    for word in shlex.split(script, comments=True):
        if word.startswith("configs/"):
            assert (ROOT / word.split("}")[0]).exists(), word


def test_accelerate_configs_point_at_existing_deepspeed_files():
    for path in (ROOT / "configs" / "accelerate").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        if config["distributed_type"] == "DEEPSPEED":
            ds_file = ROOT / config["deepspeed_config"]["deepspeed_config_file"]
            assert ds_file.is_file(), path
            assert json.loads(ds_file.read_text())["zero_optimization"]["stage"] in (2, 3)


def test_deepspeed_configs_leave_sizes_to_the_trainer():
    for stage in (2, 3):
        config = json.loads((ROOT / "configs" / "deepspeed" / f"zero{stage}.json").read_text())
        assert config["zero_optimization"]["stage"] == stage
        assert config["train_micro_batch_size_per_gpu"] == "auto"
        assert config["gradient_accumulation_steps"] == "auto"
    assert (
        json.loads((ROOT / "configs" / "deepspeed" / "zero3.json").read_text())["zero_optimization"][
            "stage3_gather_16bit_weights_on_model_save"
        ]
        is True
    )


def test_the_edge_image_installs_the_edge_extra_and_the_kit_without_its_dependencies():
    """docker/Dockerfile.edge: llama.cpp built portably in a build stage, the `edge` extra (no torch, no
    transformers) and the kit with --no-deps in the final one; compose's serve-edge serves a GGUF export."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    edge = extras["edge"]
    names = {re.split(r"[<>=!]", requirement)[0] for requirement in edge}
    assert {"llama-cpp-python", "fastapi", "uvicorn", "pillow", "numpy", "jinja2"} <= names
    assert not names & {"torch", "transformers", "onnxruntime", "accelerate"}
    for other in ("export", "serve"):  # the same pins as the extras the full image installs
        for requirement in extras[other]:
            if re.split(r"[<>=!]", requirement)[0] in names:
                assert requirement in edge, requirement
    instructions = dockerfile_instructions(ROOT / "docker" / "Dockerfile.edge")
    stages = [arg for kind, arg in instructions if kind == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS build")
    final = instructions[[kind for kind, _ in instructions].index("FROM", 2) :]
    runs = [arg for kind, arg in instructions if kind == "RUN"]
    assert any("['optional-dependencies']['edge']" in run for run in runs)
    cmake = " ".join(arg for kind, arg in instructions if kind == "ENV" and "CMAKE_ARGS" in arg)
    assert "-DGGML_NATIVE=OFF" in cmake and "-DGGML_AMX_INT8=OFF" in cmake
    final_runs = " ".join(arg for kind, arg in final if kind == "RUN")
    assert "libgomp1" in final_runs and "pip install --no-deps ." in final_runs and "torch" not in final_runs
    for kind, arg in instructions:
        if kind == "COPY" and not arg.startswith("--from"):
            assert (ROOT / arg.split()[0]).exists(), arg
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["serve-edge"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile.edge"
    assert service["command"][-1].startswith("python -m serve --model $${EDGE_MODEL} --host 0.0.0.0")
    assert service["environment"]["EDGE_MODEL"] == "${EDGE_MODEL:-exports/student-kd-gguf}"


def test_ci_runs_the_readmes_test_command_exactly():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2 and commands[1].endswith("python -m pytest -q")
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set "))
    ]
    assert ci == [commands[1]]
