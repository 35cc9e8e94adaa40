"""The commit a result records: HEAD, "-dirty" when the code (not results or docs) differs from it."""
import subprocess
import uuid

from rlzoo_transfer import provenance


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.PROJECT_ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_commit_is_head_and_dirty_follows_code_files_only():
    assert provenance.git_head() == _head()
    before = provenance.git_dirty()
    assert before is not None
    outside = provenance.PROJECT_ROOT / f"_probe_{uuid.uuid4().hex}.txt"     # not under CODE_PATHS
    inside = provenance.PROJECT_ROOT / "scripts" / f"_probe_{uuid.uuid4().hex}.py"
    try:
        outside.write_text("results are not code\n")
        assert provenance.git_dirty() == before
        inside.write_text("# an untracked script changes what runs\n")
        assert provenance.git_dirty() is True
        assert provenance.git_commit() == _head() + "-dirty"
    finally:
        outside.unlink(missing_ok=True)
        inside.unlink(missing_ok=True)
    assert provenance.git_dirty() == before


def test_rlzoo_commit_names_a_copy_without_git(monkeypatch):
    monkeypatch.setenv("RLZOO_COMMIT", "abc123")
    assert provenance.git_commit() == "abc123" and provenance.git_dirty() is None


def test_versions_names_missing_packages_none():
    v = provenance.versions(("torch", "no-such-package-xyz"))
    assert v["torch"] and v["no-such-package-xyz"] is None and v["python"].count(".") == 2
