"""Installing adds sharedattn.kernels / sharedattn.analysis and no top-level kernels or analysis."""
import subprocess
import sys


def _run(code: str, tmp_path) -> str:
    # Run from an empty folder so the repository root is not on sys.path.
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_no_top_level_kernels_or_analysis(tmp_path):
    code = ("import importlib.util as u;"
            "print(u.find_spec('kernels') is None, u.find_spec('analysis') is None,"
            " u.find_spec('sharedattn.kernels') is not None, u.find_spec('sharedattn.analysis') is not None)")
    assert _run(code, tmp_path) == "True True True True"


def test_library_import_is_light(tmp_path):
    code = ("import sys, sharedattn.kernels, sharedattn.analysis;"
            "print(sorted(m for m in ('transformers', 'matplotlib', 'seaborn') if m in sys.modules))")
    assert _run(code, tmp_path) == "[]"


def test_cli_help_does_not_import_torch(tmp_path):
    code = "import sys, sharedattn_cli.app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert _run(code, tmp_path) == "False False"
