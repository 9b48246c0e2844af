"""``python -m mmaudit.sample [FOLDER]``: rebuild the bundled sample (images, tokenizer, both
checkpoints) from scratch."""

import json
import sys
from pathlib import Path

from mmaudit.sample.build import build_sample

target = Path(sys.argv[1] if len(sys.argv) > 1 else "sample_data")
print(json.dumps(build_sample(target), indent=2))
