"""Only the core registers module hooks: every pillar reads and writes through `tap` (module sites included).

Tensor hooks (``tensor.register_hook``, gradients of one tensor) are not module hooks and are allowed anywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import actkit

SOURCE = Path(actkit.__file__).resolve().parent
CORE = SOURCE / "core"
#: Module hook registrations: per module and global (torch.nn.modules.module.register_module_forward_hook).
MODULE_HOOKS = re.compile(r"\b(register_(?:module_)?forward_(?:pre_)?hook|register_(?:module_)?full_backward_"
                          r"(?:pre_)?hook)\b")


def module_hooks_outside_core(root: Path) -> list[str]:
    """``file:line`` of every module-hook registration in `root`'s Python files outside its ``core`` folder."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if (root / "core") in path.parents:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if MODULE_HOOKS.search(line):
                found.append(f"{path.relative_to(root.parent)}:{number}")
    return found


def test_module_hooks_live_only_in_the_core() -> None:
    found = module_hooks_outside_core(SOURCE)
    assert not found, "module hooks outside actkit/core (use tap and module sites instead): " + ", ".join(found)


def test_the_scan_finds_a_hook(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "hooks.py").write_text("m.register_forward_hook(f)\n")
    (tmp_path / "pillar.py").write_text("x = 1\nhandle = m.register_forward_pre_hook(f, with_kwargs=True)\n"
                                        "t.register_hook(g)\nm.register_full_backward_hook(h)\n")
    assert module_hooks_outside_core(tmp_path) == [f"{tmp_path.name}/pillar.py:2", f"{tmp_path.name}/pillar.py:4"]
