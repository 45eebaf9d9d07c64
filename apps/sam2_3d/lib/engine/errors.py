"""Errors the engine raises for bad input; the infer layer turns them into HTTP 4xx answers.

They carry an HTTP status so that a client always learns *what* was wrong (a point outside the
volume, an unknown image, an unreadable file) instead of a bare 500, and the server keeps serving.
"""


class EngineInputError(ValueError):
    """The request is well-formed HTTP but its content cannot be served (HTTP 400)."""

    status_code = 400


class PromptError(EngineInputError):
    """A prompt (point, box, mask, slice range) is empty, malformed or outside the volume."""


class ImageNotFound(EngineInputError):
    """The image id (or session) does not name anything this server holds (HTTP 404)."""

    status_code = 404


class UnreadableImage(EngineInputError):
    """The file exists but is not an image we can read (HTTP 415)."""

    status_code = 415


class WrongDimensions(EngineInputError):
    """The image is not a 3D scalar volume (HTTP 422)."""

    status_code = 422


class UnknownOption(EngineInputError):
    """An unknown preset, checkpoint or other named option (HTTP 400)."""


class BadRequestValue(EngineInputError):
    """A request field has the wrong type, is not finite, or is out of its allowed range (HTTP 400)."""


class UnsafeName(EngineInputError):
    """An image id, label tag or session id that is not a plain name: it could name a server path (HTTP 400)."""


class InvalidLabel(EngineInputError):
    """An uploaded label that is not a usable label of its image: wrong grid, not integer, truncated (HTTP 422)."""

    status_code = 422


def unknown_image(image) -> ImageNotFound:
    """The one answer for an image id that names nothing: checked by the app before the task, and by the task."""
    return ImageNotFound(
        f"unknown image {image!r}: it is not in the datastore, and no live session holds it (a session_id may have "
        f"expired)"
    )
