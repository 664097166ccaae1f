"""Device profiles: the shipped ones validate, malformed ones are rejected with file:key: reason."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.errors import ProfileError
from edgepack.profiles import SHIPPED_DIR, get_profile, load_profile_file, load_profiles

REQUIRED = ["pixel-6", "pixel-7", "pixel-8", "pixel-8-pro", "pixel-9-pro", "galaxy-s23", "galaxy-s24", "iphone-15-pro",
            "raspberry-pi-5-8gb", "macbook-air-m1-8gb", "macbook-air-m2", "macbook-air-m3", "macbook-pro-m3-pro",
            "x86-laptop-ddr5", "jetson-orin-nano-8gb",
            # issue 17's phones, one per SoC on its list
            "galaxy-s25", "poco-f7-ultra", "oneplus-15", "poco-f6", "oneplus-nord-4", "vivo-x200", "poco-x7-pro",
            "pixel-10", "iphone-16-pro", "galaxy-s24-exynos"]


def test_shipped_profiles_validate_and_cover_the_issue_list():
    profiles = load_profiles()
    assert set(REQUIRED) <= set(profiles)
    for p in profiles.values():
        assert 0 < p.ram_usable_gb.value <= p.ram_total_gb.value
        assert p.default_backend in p.generation_efficiency


def _walk(node, path=""):
    if isinstance(node, dict):
        nums = [k for k, v in node.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "schema"]
        yield path, node, nums
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_every_number_has_a_source_and_kind():
    for p in load_profiles().values():
        for path, table, nums in _walk(p.raw):
            if nums:
                assert table.get("kind") in ("spec", "measurement", "estimate"), (p.name, path)
                assert len(table.get("source", "")) >= 8, (p.name, path)
                if table["kind"] == "estimate":
                    assert table.get("note"), (p.name, path)


MEASURED = 'source = "a measurement here", kind = "measurement"'


def _bad(tmp_path: Path, edit) -> Path:
    text = (SHIPPED_DIR / "pixel-8.toml").read_text()
    out = tmp_path / "pixel-8.toml"
    out.write_text(edit(text))
    return out


@pytest.mark.parametrize("edit, key, reason", [
    (lambda t: t.replace('kind = "phone"', 'kind = "phone"\ncolour = "blue"'), "colour", "unknown key"),
    (lambda t: t.replace("gb_s = 68.3", 'gb_s = "fast"'), "memory.bandwidth.gb_s", "must be a number"),
    (lambda t: t.replace("gb_s = 68.3", "gb_s = -3"), "memory.bandwidth.gb_s", "must be > 0"),
    (lambda t: re.sub(r'(total = \{ gb = 8), source = "[^"]*",', r"\1,", t), "memory.total.source", "missing"),
    (lambda t: t + '[generation]\ncpu = { efficiency = 1.7, source = "a vendor page", kind = "spec" }\n',
     "generation.cpu.efficiency", "(0, 1]"),
    (lambda t: t.replace("[memory]", '[gpu]\nname = "Mali"\ncores = 0\nsource = "a vendor page"\nkind = "spec"\n\n[memory]'),
     "gpu.cores", "must be > 0"),
    (lambda t: t.replace("usable = { gb = 4.0", "usable = { gb = 40.0"), "memory.usable.gb", "exceeds"),
    (lambda t: t.replace('default_backend = "cpu"', 'default_backend = "metal"'), "default_backend", "not in backends"),
    # a GPU backend needs the GPU's size ([gpu] cores) to take its class's prompt rates, or rates of its own
    (lambda t: t.replace('backends = ["cpu"]', 'backends = ["cpu", "vulkan"]'), "prompt.vulkan.q4_0", "missing"),
    (lambda t: t + f'[generation_compute.cpu]\nq4_0 = {{ gweights_per_core_ghz = 0, {MEASURED} }}\n',
     "generation_compute.cpu.q4_0.gweights_per_core_ghz", "must be > 0"),
    (lambda t: t.replace('backends = ["cpu"]', 'backends = ["vulkan"]').replace('default_backend = "cpu"',
     'default_backend = "vulkan"') + f'[generation_compute.cpu]\nq4_0 = {{ gweights_per_core_ghz = 2, {MEASURED} }}\n',
     "generation_compute.cpu", "backend not in backends"),
    (lambda t: t.replace("value = 5,", "value = 64,"), "cpu.threads.value", "exceeds"),
    (lambda t: t.replace('kind = "spec" },\n]', 'kind = "rumour" },\n]'), "cpu.clusters[2].kind", "must be one of"),
    # the name becomes a bundle folder: one safe file-name component of sane length
    (lambda t: t.replace('name = "pixel-8"', f'name = "{"p" * 101}"'), "name", "at most 100"),
    (lambda t: t.replace('name = "pixel-8"', 'name = "-pixel-8"'), "name", "starts with '-'"),
])
def test_malformed_profile_is_rejected_with_file_key_reason(tmp_path, edit, key, reason):
    path = _bad(tmp_path, edit)
    with pytest.raises(ProfileError) as info:
        load_profile_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{key}"), message
    assert reason in message


def test_user_profile_folder_adds_and_replaces(tmp_path):
    text = (SHIPPED_DIR / "pixel-8.toml").read_text().replace('name = "pixel-8"', 'name = "my-phone"')
    (tmp_path / "my-phone.toml").write_text(text)
    profiles = load_profiles([tmp_path])
    assert "my-phone" in profiles and "pixel-8" in profiles
    assert get_profile("my-phone", [tmp_path]).bandwidth_gb_s.value == 68.3
    with pytest.raises(ProfileError, match="unknown profile"):
        get_profile("pixel-99")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True)


def test_cli_list_show_validate(tmp_path):
    out = _cli("profiles", "list")
    assert out.returncode == 0, out.stderr
    for name in REQUIRED:
        assert name in out.stdout
    show = _cli("profiles", "show", "raspberry-pi-5-8gb")
    assert show.returncode == 0 and "17.1" in show.stdout and "spec" in show.stdout and "estimate" in show.stdout
    bad = _bad(tmp_path, lambda t: t.replace("gb_s = 68.3", 'gb_s = "fast"'))
    res = _cli("profiles", "validate", str(bad))
    assert res.returncode == 10
    assert f"{bad}:memory.bandwidth.gb_s" in res.stderr and "Traceback" not in res.stderr
    ok = _cli("profiles", "validate", str(SHIPPED_DIR))
    assert ok.returncode == 0 and ok.stdout.count("\nok ") + 1 == len(list(SHIPPED_DIR.glob("*.toml")))


SPEED_TABLES = ("generation", "generation_by_type", "generation_compute", "prompt", "token_floor")


def test_shipped_profiles_hold_facts_and_the_speed_calibration_is_one_file():
    """Issue 15: a device file holds the device's facts; the class factors live in one calibration file, which
    benchmarks/projection.py writes from the measurements (the committed file is exactly what it writes)."""
    import importlib.util

    from edgepack.speed_calibration import CALIBRATION_FILE, to_toml

    for p in load_profiles().values():
        assert not set(SPEED_TABLES) & set(p.raw), p.name  # no calibration factors in a device file
        for backend in p.backends:  # yet every backend has its class's numbers, citing the calibration file
            assert p.efficiency(backend).source.startswith(CALIBRATION_FILE.name), (p.name, backend)
            assert p.gflops(backend, "q4_0").source.startswith(CALIBRATION_FILE.name), (p.name, backend)
    spec = importlib.util.spec_from_file_location("projection",
                                                  Path(__file__).parents[2] / "benchmarks" / "projection.py")
    projection = importlib.util.module_from_spec(spec)
    sys.modules["projection"] = projection  # its dataclasses look their module up
    spec.loader.exec_module(projection)
    profiles = load_profiles()
    rows = projection.load_rows(profiles)
    written = to_toml(projection.calibration(rows, profiles), projection.CALIBRATION_HEADER)
    assert written == CALIBRATION_FILE.read_text()


def test_a_device_override_wins_over_its_class(tmp_path):
    text = (SHIPPED_DIR / "pixel-8.toml").read_text().replace('name = "pixel-8"', 'name = "my-phone"')
    path = tmp_path / "my-phone.toml"
    path.write_text(text + f'\n[prompt.cpu]\nq4_0 = {{ gflops = 123.4, {MEASURED} }}\n')
    mine, shipped = load_profile_file(path), get_profile("pixel-8")
    assert mine.gflops("cpu", "q4_0").value == 123.4 and mine.gflops("cpu", "q4_0").kind == "measurement"
    assert mine.gflops("cpu", "q4_0").value != shipped.gflops("cpu", "q4_0").value
    # what it does not override is its class's, x its compute size
    assert mine.gflops("cpu", "k_quant") == shipped.gflops("cpu", "k_quant")
    assert mine.efficiency("cpu") == shipped.efficiency("cpu")


def test_a_phone_cpu_streams_at_most_what_phone_cpus_were_measured_to():
    """A phone's CPU memory ceiling is held to the calibration's phone_cpu_stream (GB/s), whatever its LPDDR grade;
    a laptop's is the share of its spec bandwidth."""
    from edgepack.speed_calibration import load

    cal = load()
    stream, ceiling = cal["phone_cpu_stream"]["gb_s"], cal["cpu_memory_ceiling"]["efficiency"]
    profiles = load_profiles()
    for p in profiles.values():
        if "cpu" not in p.backends:
            continue
        eff = p.efficiency("cpu").value
        if p.kind == "phone":
            assert eff == pytest.approx(min(ceiling, stream / p.bandwidth_gb_s.value), rel=1e-3), p.name
        else:
            assert eff == ceiling, p.name
    fast = profiles["oneplus-15"]  # 84.8 GB/s: held to the stream
    assert fast.efficiency("cpu").value * fast.bandwidth_gb_s.value == pytest.approx(stream, rel=1e-3)
    assert "phone_cpu_stream" in fast.efficiency("cpu").source
