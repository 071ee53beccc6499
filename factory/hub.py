"""Publish an exported Hugging Face dataset folder to the Hub (``factory push``).

The folder is checked before anything is sent: a dataset card (README.md) whose YAML header parses and names
a ``license``, and parquet files under ``data/``. Then the dataset repo is created if needed and one commit
carries what changed: each local file is compared with the remote tree (git blob id, or the LFS sha256), so
pushing the same export again makes no commit, and remote files under ``data/`` that the export no longer
has are deleted in the same commit. The commit names the head it was computed against, so a concurrent
change to the repo fails the push instead of being overwritten.

The token comes from the caller, ``HF_TOKEN`` or the saved login; it is sent only in the Authorization header
and is scrubbed from every error message. ``huggingface_hub`` (the ``hub`` extra) is imported here only.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.errors import ConfigError, FactoryError

if TYPE_CHECKING:
    from factory.export import ExportResult
    from factory.store import Store

log = logging.getLogger(__name__)

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"{_NAME}/{_NAME}")
MIRRORED = "data/"
"""Remote files under this folder that the export does not have are deleted by the push."""
TOKEN_HELP = (
    "set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens) or log in once with "
    "`huggingface-cli login` (`hf auth login` in huggingface_hub 1.0 and later)"
)


class PushFailed(FactoryError):
    """The Hub could not be reached or refused the upload. The local export is untouched; re-run to retry."""

    exit_code = 6


@dataclass(frozen=True, slots=True)
class PushResult:
    repo_id: str
    repo_url: str
    commit_url: str | None
    """The commit this push made; None when nothing changed."""
    uploaded: tuple[str, ...]
    deleted: tuple[str, ...]
    unchanged: bool
    private: bool
    folder: Path


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise ConfigError(
            f"--repo-id {repo_id!r} is not a Hub dataset id: write OWNER/NAME (your user or org name, a slash, "
            "then letters, digits, '-', '_' or '.'), e.g. --repo-id alice/arithmetic-rationales"
        )


def local_files(folder: Path) -> list[str]:
    """The export's files to publish, as repo paths (hidden files and folders are left out)."""
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: not a folder; export a run first (`factory export RUN --out {folder}`), "
            "or pass a run id to `factory push`"
        )
    readme = folder / "README.md"
    if not readme.is_file():
        raise ConfigError(
            f"{readme}: missing; is {folder} a `factory export` folder in the hf format? "
            f"Export with `factory export RUN --out {folder}`"
        )
    license_ = _card_license(readme)
    if not license_:
        raise ConfigError(
            f"{readme}: the dataset card has no `license:`; set `license:` in the run config and export again"
        )
    if not sorted((folder / "data").glob("*.parquet")):
        raise ConfigError(
            f"{folder}: no data files (data/*.parquet); export the run in the hf format "
            f"(`factory export RUN --out {folder} --format hf`)"
        )
    paths = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            paths.append(rel.as_posix())
    return paths


def _card_license(readme: Path) -> str | None:
    from huggingface_hub import DatasetCard

    from factory.yamlsafe import check_events

    try:
        text = readme.read_text(encoding="utf-8")
        header = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""
        check_events(header, f"{readme}: the dataset card's YAML header")  # no alias bomb, no deep nesting
        card = DatasetCard(text)
    except ConfigError:
        raise
    except Exception as exc:  # yaml.YAMLError, ValueError (not a mapping), UnicodeDecodeError
        raise ConfigError(
            f"{readme}: the dataset card's YAML header does not parse ({exc}); export the run again"
        ) from None
    value = getattr(card.data, "license", None)
    return str(value) if value else None


def resolve_token(token: str | None = None) -> str:
    hf = _hf()
    token = token or hf.get_token()
    if not token:
        raise ConfigError(f"no Hugging Face token found: {TOKEN_HELP}")
    if hf.constants.HF_HUB_OFFLINE:
        raise ConfigError(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so the Hub cannot be reached: unset it, "
            "or set HF_HUB_OFFLINE=0, to push"
        )
    return str(token)


def push_folder(folder: Path, repo_id: str, *, private: bool = False, token: str | None = None) -> PushResult:
    """Publish an exported dataset folder to the dataset repo ``repo_id``; see the module docstring."""
    check_repo_id(repo_id)
    _hf()
    folder = folder.resolve()
    paths = local_files(folder)
    token = resolve_token(token)
    rerun = f"factory push {shlex.quote(str(folder))} --repo-id {repo_id}" + (" --private" if private else "")
    try:
        return _push(folder, paths, repo_id, private=private, token=token)
    except FactoryError as exc:
        raise type(exc)(_scrub(str(exc), token)) from None
    except Exception as exc:
        raise _failure(exc, folder=folder, repo_id=repo_id, token=token, rerun=rerun) from None


def push_run(
    store: Store, run_id: str, repo_id: str, *, out: Path | None = None, private: bool = False,
    token: str | None = None,
) -> tuple[ExportResult, PushResult]:  # fmt: skip
    """Export a run's curated view as an HF dataset folder (``out``, else the config's ``export.out``, else
    ``out/<run name>``), then push that folder."""
    from factory.export import export_configured, is_export_of

    check_repo_id(repo_id)
    token = resolve_token(token)
    cfg = store.run_config(run_id)
    if not cfg.get("license"):
        raise ConfigError(
            f"run {run_id} has no `license:` in its config; set `license:` in the run config and export again"
        )
    target = Path(
        out or (cfg.get("export") or {}).get("out") or Path("out") / store.run_summary(run_id)["name"]
    )
    # An earlier export of this same run is refreshed; any other non-empty folder is refused.
    exported = export_configured(store, run_id, target, fmt="hf", overwrite=is_export_of(target, run_id))
    log.info("exported %d records of %s to %s", exported.rows, run_id, exported.out)
    return exported, push_folder(exported.out, repo_id, private=private, token=token)


# -- the remote part ---------------------------------------------------------------------------------
def _push(folder: Path, paths: list[str], repo_id: str, *, private: bool, token: str) -> PushResult:
    hf = _hf()
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile

    api = hf.HfApi(token=token)
    try:
        api.whoami()
    except HfHubHTTPError as exc:
        if _status(exc) == 401:
            raise ConfigError(
                f"the Hub at {api.endpoint} rejected the token (HTTP 401): {TOKEN_HELP}"
            ) from None
        raise
    repo_url = str(api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private))
    info = api.dataset_info(repo_id)
    if private and not info.private:
        raise ConfigError(
            f"--private: the dataset {repo_id} already exists and is public; pushing would publish this export. "
            "Make the repo private on the Hub first, or push without --private"
        )
    head = info.sha  # None only for a repo without any commit
    tree = api.list_repo_tree(repo_id, recursive=True, repo_type="dataset", revision=head) if head else []
    remote = {e.path: e for e in tree if isinstance(e, RepoFile)}
    changed = [p for p in paths if not _same(folder / p, remote.get(p))]
    stale = sorted(p for p in remote if p.startswith(MIRRORED) and p not in set(paths))
    log.info(
        "%s: %d of %d files unchanged, %d to upload, %d to delete",
        repo_id, len(paths) - len(changed), len(paths), len(changed), len(stale),
    )  # fmt: skip
    if not changed and not stale:
        return PushResult(repo_id, repo_url, None, (), (), True, bool(info.private), folder)
    ops: list[Any] = [hf.CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in changed]
    ops += [hf.CommitOperationDelete(path_in_repo=p) for p in stale]
    commit = api.create_commit(
        repo_id, ops, repo_type="dataset", parent_commit=head,
        commit_message=f"factory push: {len(changed)} files from {folder.name}",
        commit_description="Exported and pushed with `factory push`.",
    )  # fmt: skip
    log.info("%s: committed %s", repo_id, commit.commit_url)
    return PushResult(
        repo_id, repo_url, commit.commit_url, tuple(changed), tuple(stale), False, bool(info.private), folder
    )


def _same(path: Path, remote: Any) -> bool:
    """Whether the local file has the remote file's content (LFS: sha256; otherwise: git blob id)."""
    size = path.stat().st_size
    if remote is None or (remote.size is not None and remote.size != size):
        return False
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    if remote.lfs is not None:
        return bool(remote.lfs.sha256 == sha256.hexdigest())
    return bool(remote.blob_id == sha1.hexdigest())


def _failure(exc: Exception, *, folder: Path, repo_id: str, token: str, rerun: str) -> FactoryError:
    from huggingface_hub import constants

    status = _status(exc)
    # An HTTP error's own text repeats the URL and a generic line; the server's message is the useful part.
    text = (getattr(exc, "server_message", None) if status is not None else None) or str(exc)
    detail = " ".join(_scrub(text, token).split())[:400] or type(exc).__name__
    log.debug("push of %s to %s failed: %s: %s", folder, repo_id, type(exc).__name__, detail)
    if status == 403:
        owner = repo_id.split("/")[0]
        return ConfigError(
            f"--repo-id {repo_id}: the Hub refused the write (HTTP 403: {detail}); use a token with write access "
            f"to {owner!r}, or a namespace you belong to. The local export at {folder} is intact"
        )
    if status == 412:
        what = f"the repo {repo_id} changed while this push was computed (HTTP 412)"
    elif status is not None:
        request = getattr(getattr(exc, "response", None), "request", None)
        call = f" to {request.method} {request.url.path}" if request is not None else ""
        what = f"the Hub at {constants.ENDPOINT} answered HTTP {status}{call}: {detail}"
    else:
        what = f"could not talk to the Hub at {constants.ENDPOINT}: {type(exc).__name__}: {detail}"
    return PushFailed(
        f"push to {repo_id} failed: {what}. The local export at {folder} is intact; to retry, run: {rerun}"
    )


def _status(exc: BaseException) -> int | None:
    code = getattr(getattr(exc, "response", None), "status_code", None)
    return int(code) if isinstance(code, int) else None


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _hf() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("factory push needs huggingface_hub: pip install 'distill-factory[hub]'") from None
    return huggingface_hub
