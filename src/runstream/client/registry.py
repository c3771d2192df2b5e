"""The model registry from the SDK: register a run's artifact as a model version, move it
through stages and aliases, review it, and fetch it back by a `models:/` URI."""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from runstream.client import settings
from runstream.client.channel import typed_errors
from runstream.wire.proto import registry_pb2 as rpb
from runstream.wire.proto import registry_pb2_grpc as rpb_grpc

if TYPE_CHECKING:
    from runstream.client.artifacts import ArtifactClient


def current_user() -> str:
    """Who the registry records as acting: RUNSTREAM_USER, else the login name."""
    user = settings.current().user
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return ""


class RegistryClient:
    def __init__(
        self, channel: grpc.Channel, artifacts: ArtifactClient, timeout: float, user: str | None = None
    ) -> None:
        self._stub: Any = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        self._artifacts = artifacts
        self.timeout = timeout
        self.user = current_user() if user is None else user

    def _call(self, method: str, request: Any) -> Any:
        metadata = (("runstream-user", self.user),) if self.user else ()
        return getattr(self._stub, method)(request, timeout=self.timeout, metadata=metadata)

    # ------------------------------------------------------------ models

    @typed_errors
    def create_registered_model(
        self, name: str, description: str = "", tags: Mapping[str, str] | None = None
    ) -> rpb.RegisteredModel:
        return self._call(  # type: ignore[no-any-return]
            "CreateRegisteredModel",
            rpb.CreateRegisteredModelRequest(name=name, description=description, tags=dict(tags or {})),
        )

    @typed_errors
    def get_registered_model(self, name: str) -> rpb.RegisteredModel:
        return self._call("GetRegisteredModel", rpb.ModelRef(name=name))  # type: ignore[no-any-return]

    @typed_errors
    def rename_registered_model(self, name: str, new_name: str) -> rpb.RegisteredModel:
        return self._call(  # type: ignore[no-any-return]
            "RenameRegisteredModel", rpb.RenameRegisteredModelRequest(name=name, new_name=new_name)
        )

    @typed_errors
    def update_registered_model(
        self,
        name: str,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        delete_tags: list[str] | None = None,
    ) -> rpb.RegisteredModel:
        req = rpb.UpdateRegisteredModelRequest(name=name, set_tags=dict(set_tags or {}), delete_tags=delete_tags or [])
        if description is not None:
            req.description = description
        return self._call("UpdateRegisteredModel", req)  # type: ignore[no-any-return]

    @typed_errors
    def delete_registered_model(self, name: str) -> None:
        self._call("DeleteRegisteredModel", rpb.ModelRef(name=name))

    @typed_errors
    def search_registered_models(
        self, name_like: str = "", tags: Mapping[str, str] | None = None, order_by: str = "name", max_results: int = 100
    ) -> list[rpb.RegisteredModel]:
        """Every matching model, page after page."""
        found: list[rpb.RegisteredModel] = []
        token = ""
        while True:
            page = self._call(
                "SearchRegisteredModels",
                rpb.SearchRegisteredModelsRequest(
                    name_like=name_like,
                    tags=dict(tags or {}),
                    order_by=order_by,
                    max_results=max_results,
                    page_token=token,
                ),
            )
            found += page.models
            token = page.next_page_token
            if not token:
                return found

    # ------------------------------------------------------------ versions

    @typed_errors
    def register_model(
        self,
        run_id: str,
        artifact_path: str,
        name: str,
        description: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> rpb.ModelVersion:
        """A new version of model `name` (created when missing) from the run's artifact at `artifact_path`."""
        return self._call(  # type: ignore[no-any-return]
            "CreateModelVersion",
            rpb.CreateModelVersionRequest(
                name=name, run_id=run_id, artifact_path=artifact_path, description=description, tags=dict(tags or {})
            ),
        )

    @typed_errors
    def get_model_version(self, name_or_uri: str, version: int | None = None) -> rpb.ModelVersion:
        """By name and number, or by URI: models:/wine/3, models:/wine/Production, models:/wine@champion."""
        if version is not None:
            return self._call("GetModelVersion", rpb.ModelVersionRef(name=name_or_uri, version=version))  # type: ignore[no-any-return]
        return self._call("ResolveModelUri", rpb.ResolveModelUriRequest(uri=name_or_uri))  # type: ignore[no-any-return]

    @typed_errors
    def list_model_versions(self, name: str, stages: list[str] | None = None) -> list[rpb.ModelVersion]:
        reply = self._call("ListModelVersions", rpb.ListModelVersionsRequest(name=name, stages=stages or []))
        return list(reply.versions)

    @typed_errors
    def update_model_version(
        self,
        name: str,
        version: int,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        delete_tags: list[str] | None = None,
    ) -> rpb.ModelVersion:
        req = rpb.UpdateModelVersionRequest(
            name=name, version=version, set_tags=dict(set_tags or {}), delete_tags=delete_tags or []
        )
        if description is not None:
            req.description = description
        return self._call("UpdateModelVersion", req)  # type: ignore[no-any-return]

    @typed_errors
    def delete_model_version(self, name: str, version: int) -> None:
        self._call("DeleteModelVersion", rpb.ModelVersionRef(name=name, version=version))

    @typed_errors
    def transition_stage(
        self, name: str, version: int, stage: str, archive_existing: bool = False, comment: str = ""
    ) -> rpb.ModelVersion:
        return self._call(  # type: ignore[no-any-return]
            "TransitionStage",
            rpb.TransitionStageRequest(
                name=name, version=version, stage=stage, archive_existing=archive_existing, comment=comment
            ),
        )

    @typed_errors
    def set_alias(self, name: str, alias: str, version: int) -> rpb.ModelVersion:
        return self._call("SetAlias", rpb.SetAliasRequest(name=name, alias=alias, version=version))  # type: ignore[no-any-return]

    @typed_errors
    def delete_alias(self, name: str, alias: str) -> None:
        self._call("DeleteAlias", rpb.DeleteAliasRequest(name=name, alias=alias))

    def download_model(self, uri: str, dst: str | Path) -> Path:
        """Download the artifact behind a model URI into `dst` (SHA-256 of every file checked)."""
        version = self.get_model_version(uri)
        return self._artifacts.download_artifacts(version.run_id, version.artifact_path, dst)

    # ------------------------------------------------------------ review, history, lineage

    @typed_errors
    def comment(self, name: str, version: int, comment: str) -> rpb.ModelVersionEvent:
        return self._call(  # type: ignore[no-any-return]
            "CreateComment", rpb.CreateCommentRequest(name=name, version=version, comment=comment)
        )

    @typed_errors
    def request_transition(
        self, name: str, version: int, stage: str, comment: str = "", archive_existing: bool = False
    ) -> rpb.TransitionRequest:
        return self._call(  # type: ignore[no-any-return]
            "CreateTransitionRequest",
            rpb.CreateTransitionRequestRequest(
                name=name, version=version, stage=stage, comment=comment, archive_existing=archive_existing
            ),
        )

    @typed_errors
    def transition_requests(self, name: str, version: int) -> list[rpb.TransitionRequest]:
        return list(self._call("ListTransitionRequests", rpb.ModelVersionRef(name=name, version=version)).requests)

    @typed_errors
    def approve_transition(self, request_id: int, comment: str = "") -> rpb.TransitionRequest:
        return self._call(  # type: ignore[no-any-return]
            "ApproveTransitionRequest", rpb.DecideTransitionRequest(request_id=request_id, comment=comment)
        )

    @typed_errors
    def reject_transition(self, request_id: int, comment: str = "") -> rpb.TransitionRequest:
        return self._call(  # type: ignore[no-any-return]
            "RejectTransitionRequest", rpb.DecideTransitionRequest(request_id=request_id, comment=comment)
        )

    @typed_errors
    def history(self, name: str, version: int) -> list[rpb.ModelVersionEvent]:
        return list(self._call("GetModelVersionHistory", rpb.ModelVersionRef(name=name, version=version)).events)

    @typed_errors
    def lineage(self, name_or_uri: str, version: int | None = None) -> rpb.ModelVersionLineage:
        v = self.get_model_version(name_or_uri, version)
        return self._call(  # type: ignore[no-any-return]
            "GetModelVersionLineage", rpb.ModelVersionRef(name=v.name, version=v.version)
        )
