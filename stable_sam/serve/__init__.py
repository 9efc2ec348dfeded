"""`stable-sam serve`: a local web page to try SAM and Stable-SAM side by side on a scene or an
uploaded image (a box, clicks, the 20-noisy-box shake, mask downloads).

Needs the `serve` extra (FastAPI and uvicorn): `pip install -e ".[serve]"`. The web modules are
imported on use, so `stable_sam.serve.session` works without them.
"""

