"""sam2-3d: SAM 2 interactive 3D segmentation as a MONAI Label app.

    monailabel start_server --app apps/sam2_3d --studies <folder or DICOMweb URL> \
        --conf checkpoint sam2.1_hiera_tiny

The app is thin: ``lib/configs/sam2_3d.py`` builds one SAM 2 engine and its infer tasks;
``lib/activelearning`` hands out the next image to annotate.
"""

from __future__ import annotations

import logging

from monailabel.interfaces.app import MONAILabelApp

from lib.activelearning import strategies
from lib.configs.sam2_3d import Sam2Config

logger = logging.getLogger(__name__)


class Sam2App(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict):
        self.model_config = Sam2Config()
        self.model_config.init("sam2", app_dir, conf, None, datastore=lambda: self.datastore())
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="sam2-3d",
            description="SAM 2 interactive 3D segmentation: clicks, boxes or a mask on one slice, propagated",
            version="0.1.0",
            labels=self.model_config.labels,
        )

    def init_infers(self):
        return self.model_config.infer()

    def init_strategies(self):
        return strategies(self)

    def infer(self, request, datastore=None):
        # monailabel replaces the image id by its file path before the task sees it; keep the id so
        # tasks can name it in errors and find the image's saved labels.
        request = dict(request)
        request.setdefault("image_id", request.get("image"))
        return super().infer(request, datastore)
