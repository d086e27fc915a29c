"""File primitives every layer uses: directories committed atomically with a SHA-256 manifest (``atomic``) and
pinned, checksummed assets fetched from the package registries and cached (``assets``)."""
