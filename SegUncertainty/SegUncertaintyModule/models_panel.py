"""The panel's model list: every installed model (those that cannot be used greyed out with their reason as
tooltip), bound to the parameter node's ``model``, and the "Add model..." button."""

from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _


class ModelsPanel:
    """Mixed into SegUncertaintyWidget (uses ``self.ui``, ``self.logic``, ``self._parameterNode``, and
    ``self._fillingModelList``, True while the list is refilled)."""

    def setupModelsPanel(self) -> None:
        self.ui.modelComboBox.currentTextChanged.connect(self.onModelChanged)
        self.ui.addModelButton.clicked.connect(self.onAddModel)

    def onModelChanged(self, name: str) -> None:
        if self._parameterNode and name and not self._fillingModelList:
            self._parameterNode.model = name

    def updateModelList(self) -> None:
        """Refill the model list from the catalog (logic.modelChoices): every installed model, those that
        cannot be used disabled with their reason as tooltip. The selection stays the parameter's."""
        params = self._parameterNode
        combo = self.ui.modelComboBox
        self._fillingModelList = True  # refilling must not change the parameter (clear() and addItem emit)
        try:
            combo.clear()
            for index, choice in enumerate(self.logic.modelChoices(params.model if params else None)):
                combo.addItem(choice.name)
                combo.setItemData(index, choice.tooltip, qt.Qt.ToolTipRole)
                if not choice.usable:
                    combo.model().item(index).setEnabled(False)
            if params:
                combo.setCurrentText(params.model)
        finally:
            self._fillingModelList = False

    def onAddModel(self) -> None:
        """Ask for a model folder and install it as `seguncertainty models add` does; then select it."""
        folder = qt.QFileDialog.getExistingDirectory(
            None, _("Select a model folder (card.json, nnU-Net v2 results folder or MONAI bundle)"))
        if not folder:
            return
        name = None
        try:
            # checking a model loads its networks (torch, and nnunetv2 or onnxruntime for those formats)
            if self.logic.ensureDependencies(ask=True, model=folder):
                name = self.logic.addModel(folder)
        except RuntimeError as exc:
            slicer.util.errorDisplay(_("Could not add the model: ") + str(exc))
        self.updateModelList()
        if name and self._parameterNode:
            self._parameterNode.model = name  # the observer selects it in the list
