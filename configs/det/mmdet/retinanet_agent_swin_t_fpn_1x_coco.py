# RetinaNet 1x COCO, Agent-Swin-T. The official repo (LeapLabTHU/Agent-Attention) has RetinaNets for Agent-PVT only;
# backbone settings, augmentation and optimizer are those of its Agent-Swin-T Mask R-CNN 1x
# (downstream/detection/configs/agent_swin/agent_swin_t_mrcnn_1x_9-12-14-7.py: agent grids 9-12-14-7, drop path 0.1,
# a LayerNorm per output, multi-scale + crop augmentation, AdamW lr 1e-4 wd 0.05, no decay on norms / agent biases).
_base_ = './_base_/retinanet_1x_ms_crop.py'
pretrained = 'checkpoints/agent_swin_t.pth'  # official release (Agent-Attention README); its layout is mapped on load
model = dict(
    backbone=dict(
        model_name='agent_swin_t',
        drop_path_rate=0.1,
        model_kwargs=dict(downstream_agent_shapes=[(9, 9), (12, 12), (14, 14), (7, 7)]),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'an_bias': dict(decay_mult=0.),
        'na_bias': dict(decay_mult=0.),
        'ah_bias': dict(decay_mult=0.),
        'aw_bias': dict(decay_mult=0.),
        'ha_bias': dict(decay_mult=0.),
        'wa_bias': dict(decay_mult=0.)}))
