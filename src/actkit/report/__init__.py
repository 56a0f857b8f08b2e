"""Reports a person looks at: PNG plots (`plots`, needs matplotlib) and a static HTML page (`html`).

Install the plotting dependency with ``pip install 'actkit[report]'``; without it the HTML page is still
written, with the numbers but no figures.
"""

from __future__ import annotations
