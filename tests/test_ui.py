"""``osdsr ui`` served on a free local port: driven in headless Chromium, and called by ``gradio_client``.

Without gradio, selenium or Chromium these tests skip, unless ``OSDSR_REQUIRE_UI_TESTS=1`` (set by
``.ci/run``) makes a missing piece a failure. ``OSDSR_UI_SCREENSHOT=PATH`` keeps the page's screenshot.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from osdsr.cli import main


REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
PHOTOS = (EXAMPLES / "rocket.png", EXAMPLES / "hubble_deep_field.png")  # real photographs, 256 px
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Headless, and nothing that reaches the network (sync, updates, QUIC probes, first-run pages).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
PAGE_TIMEOUT_S = 90


def _required() -> bool:
    return os.environ.get("OSDSR_REQUIRE_UI_TESTS") == "1"


def _need(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        if _required():
            raise
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(URL, output folder) of the page with the default model, as ``osdsr ui`` builds and serves it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    _need("gradio")
    from osdsr.model_loading import load_sr_model
    from osdsr.ui import build_app, launch

    output = tmp_path_factory.mktemp("ui_out")
    app = build_app(load_sr_model, output, models=[])
    url = launch(app, output, port=_free_port(), block=False)
    yield url, output
    app.close()


def test_upscale_api_equals_the_command_line(page: tuple[str, Path], tmp_path: Path) -> None:
    """/upscale returns the very PNG that osdsr upscale writes with the same settings (strength included);
    the page serves its outputs and nothing else."""
    client_module = _need("gradio_client")
    import httpx

    url, output = page
    client = client_module.Client(url, verbose=False)
    served = client.predict(
        client_module.handle_file(str(PHOTOS[0])), "default", 128, "adain", 0.25, api_name="/upscale"
    )
    upscale = ["upscale", str(PHOTOS[0]), "-o", str(tmp_path), "--tile", "128", "--color-fix", "adain", "--strength", "0.25"]
    assert main([*upscale, "--dtype", "fp32"]) == 0  # the page runs fp32 (osdsr ui --dtype)
    written = tmp_path / "rocket.png"
    assert Path(served).read_bytes() == written.read_bytes()
    with Image.open(served) as image:
        assert image.size == (4 * 256, 4 * 171)
    assert httpx.get(f"{url}gradio_api/file={output / 'rocket_x4.png'}").status_code == 200
    assert httpx.get(f"{url}gradio_api/file={REPO_ROOT / 'README.md'}").status_code == 403


def _browser(profile: Path):
    webdriver = _need("selenium.webdriver")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        if _required():
            pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver")
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1100"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_page_in_headless_chromium(page: tuple[str, Path], tmp_path: Path) -> None:
    """Two photos and a corrupt file dropped on the page: two sliders at x4, one message, one zip."""
    from osdsr.model_loading import load_sr_model

    url, output = page
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(np.random.default_rng(0).bytes(600))
    driver = _browser(tmp_path / "chromium-profile")
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(driver, PAGE_TIMEOUT_S)
        driver.get(url)
        slider = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#strength input[type=number]"))
        assert float(slider.get_attribute("value")) == load_sr_model("default").strength  # the model's own default
        picker = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#inputs input[type=file]"))
        picker.send_keys("\n".join(str(p) for p in (*PHOTOS, corrupt)))
        wait.until(lambda d: all(p.stem in d.find_element(By.ID, "inputs").text for p in (*PHOTOS, corrupt)))
        driver.find_element(By.ID, "start").click()
        wait.until(lambda d: "2 of 3 upscaled." in d.find_element(By.ID, "status").text)
        status = driver.find_element(By.ID, "status").text
        assert "broken.png failed: not a readable image" in status, status
        sizes_script = "return [...document.querySelectorAll('.result img')].map(i => [i.naturalWidth, i.naturalHeight])"
        wait.until(lambda d: len([s for s in d.execute_script(sizes_script) if s[0] > 0]) == 4)
        sizes = {tuple(size) for size in driver.execute_script(sizes_script)}
        assert {(1024, 684), (1024, 1024)} <= sizes  # the after sides, x4 of 256x171 and 256x256
        assert {(256, 171), (256, 256)} <= sizes  # the before sides
        link = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#downloads a"))
        assert link.get_attribute("href").endswith(".zip")
    finally:
        driver.save_screenshot(str(tmp_path / "ui.png"))
        driver.quit()
    if os.environ.get("OSDSR_UI_SCREENSHOT"):
        shutil.copyfile(tmp_path / "ui.png", os.environ["OSDSR_UI_SCREENSHOT"])
    (archive,) = output.glob("osdsr_results_*.zip")
    with zipfile.ZipFile(archive) as bundle:
        names = sorted(bundle.namelist())  # rocket_x4_2.png when the API test wrote rocket_x4.png before
        assert [name.split("_x4")[0] for name in names] == ["hubble_deep_field", "rocket"]
        with Image.open(bundle.open(names[1])) as rocket:
            assert rocket.size == (1024, 684)


def test_command_errors_are_one_line_and_gradio_stays_out_of_other_commands(capsys: pytest.CaptureFixture[str]) -> None:
    _need("gradio")
    assert main(["ui", "--model", "/no/such/model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such model" in err and len(err.splitlines()) == 1
    check = "import sys, osdsr.cli, osdsr.commands.upscale; sys.exit('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0
