"""Input formats: kilomatch's own input folder and the formats converted into it.

- :mod:`.folder`: the input folder's file names and its one writer (atomic, complete
  replacement on overwrite); every converter and the simulator write through it.
- :mod:`.sessions`: one spike sorting per session -> the folder (shared by the three below).
- :mod:`.phy`: Kilosort / phy output folders.
- :mod:`.raw_gain`: uV per bit from a SpikeGLX ``.meta`` or Open Ephys ``structure.oebin``.
- :mod:`.spikeinterface`: saved SpikeInterface SortingAnalyzers.
- :mod:`.nwb`: NWB files with a units table.
- :mod:`.spikeinfo`: Kilomatch / DANT MATLAB ``spikeInfo.mat``.

The public entry points stay where users know them: :mod:`kilomatch.importers` and
:mod:`kilomatch.io` re-export the converters and keep their ``python -m`` commands.
"""
