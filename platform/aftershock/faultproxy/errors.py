"""The API's errors, with Toxiproxy's messages and status codes (clients match on both)."""

from __future__ import annotations


class ApiError(Exception):
    """An error the HTTP API answers as `{"error": message, "status": status}`."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, "status": self.status}


class BadRequestBody(ApiError):
    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(f"bad request body: {detail}")


class MissingField(ApiError):
    status = 400

    def __init__(self, field: str) -> None:
        super().__init__(f"missing required field: {field}")


class ProxyNotFound(ApiError):
    status = 404

    def __init__(self) -> None:
        super().__init__("proxy not found")


class ProxyAlreadyExists(ApiError):
    status = 409

    def __init__(self) -> None:
        super().__init__("proxy already exists")


class InvalidStream(ApiError):
    status = 400

    def __init__(self) -> None:
        super().__init__("stream was invalid, can be either upstream or downstream")


class InvalidToxicType(ApiError):
    status = 400

    def __init__(self) -> None:
        super().__init__("invalid toxic type")


class ToxicAlreadyExists(ApiError):
    status = 409

    def __init__(self) -> None:
        super().__init__("toxic already exists")


class ToxicNotFound(ApiError):
    status = 404

    def __init__(self) -> None:
        super().__init__("toxic not found")
