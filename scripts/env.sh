# Environment for runs on a machine with no route out: nothing phones home, nothing hits a hub.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
export DVC_NO_ANALYTICS=1
export NO_ALBUMENTATIONS_UPDATE=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export TOKENIZERS_PARALLELISM=false
