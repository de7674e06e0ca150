"""Screenshots of TensorBoard and Aim comparing three runs, for the docs page "Watch and compare runs".

Trains three small Tiny Shakespeare models (GPT-2, Llama, Llama with MLA) into one save_dir, so they
share its Aim repo and TensorBoard root; starts each viewer with the command `lmlab board --print`
gives; drives headless Chromium (Debian's chromium and chromium-driver, as the docs tests use) to the
validation-loss charts; writes docs/results/board_tensorboard.png and docs/results/board_aim.png.

    LMLAB_DATA_DIR=../shared/data python bench/board_screenshots.py [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from lmlab.config import resolve_config
from lmlab.pipeline.train import train_from_config
from lmlab.pipeline.train_cluster import free_port
from lmlab.track.board import find_viewer, viewer_command

ARMS = {"gpt2": ("gpt2", {}), "llama": ("llama", {}), "llama-mla": ("llama", {"attn": "mla"})}


def train_runs(save_dir: Path, steps: int) -> None:
    """The three runs, each tracked by TensorBoard and Aim under `save_dir`."""
    for tag, (preset, model) in ARMS.items():
        cfg = resolve_config(
            preset=preset,
            cli={
                "data": {"name": "shakespeare", "tokenizer": "char"},
                "model": {"n_layer": 2, "n_head": 4, "d_model": 64, "max_seq_len": 64, "dropout": 0.0, **model},
                "train": {
                    "batch_size": 16,
                    "max_steps": steps,
                    "eval_interval": max(1, steps // 10),
                    "eval_iters": 8,
                    "log_interval": 5,
                    "lr": 3e-3,
                    "save_dir": str(save_dir),
                    "run_tag": tag,
                    "sample_tokens": 0,
                    "progress": False,
                },
                "track": {"trackers": ["tensorboard", "aim"]},
            },
        )
        result = train_from_config(cfg, quiet=True)
        print(f"{tag}: val loss {result.metrics['val_loss']:.4f} ({result.run.path.name})")


def start_viewer(save_dir: Path, viewer: str) -> tuple[subprocess.Popen, str]:
    """The viewer process `lmlab board` would start, and its URL once it answers."""
    port = free_port()
    argv = viewer_command(save_dir, viewer, port)
    argv += ["--host", "127.0.0.1"] if viewer == "aim" else ["--bind_all"]
    # Its own session: `aim up` serves from a uvicorn child that must stop with it.
    proc = subprocess.Popen(
        [find_viewer(argv[0]), *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"{viewer} did not answer on {url}")


def browser(profile: Path):
    """Headless Chromium through ChromeDriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,820"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.implicitly_wait(20)
    return driver


def shoot_tensorboard(driver, url: str, out: Path, settle: float) -> None:
    """Time series filtered to val/loss: loss against step, tokens and GFLOPs, one line a run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url + "#timeseries")
    box = driver.find_element(By.CSS_SELECTOR, "input[placeholder*='Filter tags']")
    box.send_keys("val/loss")
    box.send_keys(Keys.ESCAPE)
    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label^='Close']"):
        if button.is_displayed():  # the settings pane
            button.click()
            break
    driver.find_element(By.CSS_SELECTOR, "canvas, svg")
    time.sleep(settle)  # charts animate in after their data arrives
    driver.save_screenshot(str(out))


def shoot_aim(driver, url: str, out: Path, settle: float) -> None:
    """Metrics explorer with the validation loss of every run in the repo."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url + "metrics")
    driver.find_element(By.XPATH, "//button[normalize-space()='Metrics']")
    for skip in driver.find_elements(By.XPATH, "//*[text()='Skip']"):  # the community pop-up
        skip.click()
    driver.find_element(By.XPATH, "//button[normalize-space()='Metrics']").click()
    option = [o for o in driver.find_elements(By.XPATH, "//*[@role='option']") if o.text.strip() == 'loss subset="val"']
    option[0].click()
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    driver.find_element(By.XPATH, "//button[normalize-space()='Search']").click()
    driver.find_element(By.CSS_SELECTOR, "svg path")
    time.sleep(settle)
    driver.save_screenshot(str(out))


def main() -> None:
    """Train, open both viewers, take both screenshots."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out-dir", default="docs/results")
    ap.add_argument("--settle", type=float, default=4.0, help="seconds for the charts to finish drawing")
    args = ap.parse_args()
    out = Path(args.out_dir)
    with tempfile.TemporaryDirectory(prefix="lmlab-board-") as tmp:
        save_dir = Path(tmp) / "runs"
        train_runs(save_dir, args.steps)
        driver = browser(Path(tmp) / "chromium")
        try:
            for viewer, shoot in (("tensorboard", shoot_tensorboard), ("aim", shoot_aim)):
                proc, url = start_viewer(save_dir, viewer)
                try:
                    shoot(driver, url, out / f"board_{viewer}.png", args.settle)
                    print(f"wrote {out / f'board_{viewer}.png'}")
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
