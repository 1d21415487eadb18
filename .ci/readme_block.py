"""Print the N-th fenced code block (1-based) of a Markdown file."""

import re
import sys

path, index = sys.argv[1], int(sys.argv[2])
blocks = re.findall(r"^```[^\n]*\n(.*?)^```", open(path, encoding="utf-8").read(), flags=re.S | re.M)
if len(blocks) < index:
    sys.exit(f"{path} has {len(blocks)} code blocks; expected at least {index}.")
print(blocks[index - 1].rstrip("\n"))
