# RetinaNet 1x COCO, Agent-PVT-S. Source: LeapLabTHU/Agent-Attention
# downstream/detection/configs/agent_pvt/agent_pvt_s_rtn_1x_12-16-28-28.py (agent grids 12-16-28-28 for dense inputs,
# agent_sr_ratios 1111, drop path 0.1, no output norms (the official backbone returns raw stage maps), AdamW lr 1e-4
# wd 1e-4, mmdet schedule_1x).
_base_ = './_base_/retinanet_1x.py'
pretrained = 'checkpoints/agent_pvt_s.pth'  # official release (Agent-Attention README); its layout is mapped on load
model = dict(
    backbone=dict(
        model_name='agent_pvt_s',
        drop_path_rate=0.1,
        out_norm=False,
        model_kwargs=dict(downstream_agent_shapes=[(12, 12), (16, 16), (28, 28), (28, 28)]),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 320, 512]))
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))
