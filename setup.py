from setuptools import find_packages, setup


def readme():
    with open('README.md', encoding='utf-8') as f:
        return f.read()


setup(
    name='vmamba_mm',
    version='0.1.0',
    description='VMamba and Vim visual state-space backbones for OpenMMLab '
    '(mmdet, mmseg, mmpretrain) on one Triton / PyTorch selective scan',
    long_description=readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['vmamba_mm', 'vmamba_mm.*']),
    python_requires='>=3.9',
    install_requires=['torch>=2.1'],
    extras_require={
        'mm': [
            'mmengine==0.10.7', 'mmcv==2.1.0', 'mmdet==3.3.0',
            'mmsegmentation==1.2.2', 'mmpretrain==1.2.0', 'ftfy', 'regex',
            'pycocotools'
        ],
        'triton': ['triton'],
        # ONNX export (tools/deployment/pytorch2onnx.py) and its onnxruntime check
        'deploy': ['onnx>=1.23', 'onnxscript>=0.7', 'onnxruntime>=1.32'],
    },
    license='Apache-2.0',
)
