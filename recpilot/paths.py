"""Where things live on disk, relative to the checkout."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
DEPLOY_DIR = REPO_ROOT / "deploy"
CACHE_DIR = REPO_ROOT / ".cache"
# ../shared beside the checkout (design docs and the Open Bandit sample).
SHARED_DIR = REPO_ROOT.parent / "shared"
