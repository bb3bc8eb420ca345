"""galclip serve: similarity search in the browser over an index folder (FastAPI + a static page)."""
