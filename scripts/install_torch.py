"""Install torch for ``make setup``: ``python scripts/install_torch.py REQUIREMENT [INDEX_URL]``.

* With an index (the Makefile's ``TORCH_INDEX``, by default PyTorch's CPU wheel index on machines
  without ``nvidia-smi``), torch comes from that index -- unless it cannot be reached (as from a CI
  machine that reaches PyPI only): then a warning is printed and the default package index is used.
* A CPU build is replaced by a CUDA build (and back) when the index asks for the other kind
  (``.../whl/cpu`` versus ``.../whl/cu126``); pip alone would keep the installed build, since
  ``torch==2.13.0`` is satisfied by ``2.13.0+cpu``.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import urllib.request


def reachable(index: str, timeout: float = 20.0) -> bool:
    """Whether ``index`` answers for the ``torch`` project page."""
    try:
        with urllib.request.urlopen(index.rstrip("/") + "/torch/", timeout=timeout):
            return True
    except Exception:  # noqa: BLE001 -- DNS, refused, timeout, HTTP error: all mean "not usable"
        return False


def installed_build() -> str | None:
    """``"cuda"``, ``"cpu"`` or ``None`` (torch not installed) for this interpreter's torch."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.version.cuda is not None)"],
                         capture_output=True, text=True)
    if out.returncode:
        return None
    return "cuda" if out.stdout.strip() == "True" else "cpu"


def command(requirement: str, index: str, ok: bool, have: str | None) -> list[str]:
    """The pip command line for ``requirement`` from ``index`` (``ok``: it is reachable)."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", requirement]
    if index and ok:
        cmd += ["--index-url", index]
        want = "cpu" if index.rstrip("/").endswith("/cpu") else "cuda" if "/cu" in index else None
        if have is not None and want is not None and have != want:
            cmd.append("--force-reinstall")  # switch the build (pip keeps 2.13.0+cpu for ==2.13.0)
    return cmd


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    requirement, index = argv[0], (argv[1] if len(argv) == 2 else "").strip()
    ok = bool(index) and reachable(index)
    if index and not ok:
        print(f"WARNING: the torch index {index} cannot be reached; installing {requirement} from the default "
              "package index instead (on Linux without a local CPU wheel that is a CUDA build of several GB)",
              file=sys.stderr, flush=True)
    cmd = command(requirement, index, ok, installed_build())
    print("$ " + shlex.join(["python", *cmd[1:]]), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
