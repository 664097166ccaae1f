"""Session guards, set before any test module imports huggingface_hub (which reads its env vars once):

* HF_ENDPOINT points at a closed local port, so a test that forgets to start the loopback Hub
  (tests/hubserver.py) fails at once instead of reaching the real Hub;
* HF_HOME is a fresh temp folder, so no test reads or fills the user's cache;
* HF_HUB_OFFLINE is cleared: the Hub tests need the loopback server online, and offline cases set it themselves.
"""

import os
import tempfile

os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="edgepack-tests-hf-home-")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE"):
    os.environ.pop(_var, None)
