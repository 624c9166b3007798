"""Errors a caller sees, rendered as the contract's error body."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = fields or {}
        self.headers = headers or {}
        self.details = details or {}          # extra members of the error object, e.g. rule errors

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        error.update(self.details)
        return {"error": error}


def invalid(message: str, fields: dict[str, str] | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, fields)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")
