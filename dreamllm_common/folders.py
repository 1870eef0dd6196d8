"""Folders published whole: everything the project writes (assembled and converted folders, checkpoints, the final
model) is written into a hidden staging sibling and then takes its place in one rename, so a reader, or a run
killed with `kill -9` at any moment, sees the folder complete or not at all.

    with staged_folder(Path("runs/alignment/checkpoint-6"), replace=True) as staging:
        model.save_pretrained(staging)        # any number of files
    # runs/alignment/checkpoint-6 now holds all of them, or (after a failure) is as it was before

A folder that already exists is replaced with the Linux `renameat2(RENAME_EXCHANGE)` swap (where the system lacks
it: two renames, so a kill between them leaves the folder absent and its old contents in `.NAME.old`). Entries of
the old folder named by `carry` (e.g. the checkpoints inside a run's output folder) move into the new one as hard
links first: no data is copied, and they survive the swap.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def staging_path(final: str | Path) -> Path:
    """The hidden sibling `final` is written into: the same name on every process of a run, so that all ranks
    write one staging folder; a leftover of an interrupted save is removed by the next save."""
    final = Path(final)
    return final.parent / f".{final.name}.staging"


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; False where the system or the file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _link_tree(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source` made of hard links (links are kept as links)."""
    if source.is_symlink() or not source.is_dir():
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            os.link(source, target)
        return
    shutil.copytree(source, target, symlinks=True, copy_function=os.link)


def publish_folder(staging: str | Path, final: str | Path, carry: Callable[[str], bool] | None = None) -> None:
    """Make the complete folder `staging` become `final` in one step (see the module docstring). When `final`
    exists, its entries for which `carry(name)` is true and which `staging` lacks are kept (hard-linked into the new
    folder before the swap); its other entries go with the old folder."""
    staging, final = Path(staging), Path(final)
    if not final.exists():
        os.rename(staging, final)
        return
    if carry is not None:
        for entry in sorted(final.iterdir()):
            if carry(entry.name) and not os.path.lexists(staging / entry.name):
                _link_tree(entry, staging / entry.name)
    if _exchange(staging, final):
        shutil.rmtree(staging)  # the old folder, now at the staging path
        return
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old)


def clear_staging(final: str | Path) -> Path:
    """Remove what an interrupted save left at `final`'s staging path, and return that path (created)."""
    staging = staging_path(final)
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


@contextlib.contextmanager
def staged_folder(
    output: str | Path, *, replace: bool = False, carry: Callable[[str], bool] | None = None
) -> Iterator[Path]:
    """Yield the staging folder of `output`; when the block completes it is published as `output`
    (`publish_folder`), when the block fails it is removed. An existing `output` is refused unless `replace`."""
    output = Path(output)
    if output.exists() and not replace:
        raise FileExistsError(f"{output} exists; choose a new output folder")
    staging = clear_staging(output)
    staging.mkdir()
    try:
        yield staging
        publish_folder(staging, output, carry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["clear_staging", "publish_folder", "staged_folder", "staging_path"]
