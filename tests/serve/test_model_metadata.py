"""The exporter's metadata_props (labels, input description, checkpoint hash) reach the user."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"


def test_config_and_status_page_show_the_model_files_metadata(tapeserve_server) -> None:
    srv = tapeserve_server(EXAMPLES, workers=1)
    versions = srv.get("/v2/models/digits/config").json()["versions"]
    metadata = versions[0]["metadata"]
    assert metadata["producer"].startswith("tapeserve ")
    assert json.loads(metadata["labels"]) == [str(d) for d in range(10)]
    assert "divided by 16" in metadata["input_description"]
    assert len(metadata["checkpoint_hash"]) == 64
    page = srv.get("/").text
    assert "checkpoint_hash" in page and metadata["checkpoint_hash"] in page
    # A model file without metadata_props shows none rather than failing.
    example = srv.get("/v2/models/example/config").json()["versions"][0]
    assert set(example["metadata"]) <= {"producer"}
